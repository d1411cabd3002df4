#include "taprotocol/proof.h"

#include <openssl/evp.h>

#include <array>

#include "common/base64.h"
#include "common/random.h"

namespace vcrypt {
namespace {

using nlohmann::json;

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// SHA-256 over the concatenation of `parts`. Only a broken library fails
// here; the all-zero result then matches nothing a peer computed.
std::array<uint8_t, 32> Sha256(
    std::initializer_list<std::span<const uint8_t>> parts) {
  std::array<uint8_t, 32> md{};
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  unsigned int len = 0;
  bool ok = ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1;
  for (auto p : parts)
    ok = ok && EVP_DigestUpdate(ctx.get(), p.data(), p.size()) == 1;
  if (!ok || EVP_DigestFinal_ex(ctx.get(), md.data(), &len) != 1) md.fill(0);
  return md;
}

std::string B64Sha256(std::span<const uint8_t> data) {
  return Base64UrlEncode(Sha256({data}));
}

Error ProofError(ErrorCode code, std::string_view what) {
  return MakeError(code, "request proof: " + std::string(what));
}

}  // namespace

std::vector<uint8_t> QuoteQualifyingData(
    std::span<const uint8_t> nonce, std::span<const uint8_t> session_point) {
  static constexpr uint8_t kLabel[] = "vcrypt-attest-v1";  // with its NUL
  auto md = Sha256({kLabel, nonce, session_point});
  return {md.begin(), md.end()};
}

Result<std::string> SignRequestProof(const EcSigningKey& session,
                                     std::string_view token,
                                     std::string_view path,
                                     std::span<const uint8_t> transport_point,
                                     std::string_view ciphertext) {
  VCRYPT_ASSIGN_OR_RETURN(std::string jti, RandomUuid());
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  json claims = {{"jti", jti},
                 {"iat", now},
                 {"htu", std::string(path)},
                 {"ath", B64Sha256(Bytes(token))},
                 {"tk", B64Sha256(transport_point)}};
  if (!ciphertext.empty()) claims["ch"] = B64Sha256(Bytes(ciphertext));
  return SignJws(session, kProofType, claims);
}

Result<ProofClaims> VerifyRequestProof(
    std::string_view proof, const EcVerifyKey& session, std::string_view token,
    std::string_view path, std::span<const uint8_t> transport_point,
    std::string_view ciphertext, std::chrono::system_clock::time_point now) {
  VCRYPT_ASSIGN_OR_RETURN(json c,
                          VerifyJws(proof, session, kProofType, "request proof"));
  auto str = [&](const char* name) -> Result<std::string> {
    auto it = c.find(name);
    if (it == c.end() || !it->is_string() ||
        it->get_ref<const std::string&>().empty())
      return ProofError(ErrorCode::kInvalidArgument,
                        std::string("claim ") + name +
                            " is missing or not a non-empty string");
    return it->get<std::string>();
  };
  ProofClaims out;
  VCRYPT_ASSIGN_OR_RETURN(out.jti, str("jti"));
  if (!c.contains("iat") || !c["iat"].is_number_integer())
    return ProofError(ErrorCode::kInvalidArgument,
                      "claim iat is missing or not an integer");
  out.iat = c["iat"].get<int64_t>();
  VCRYPT_ASSIGN_OR_RETURN(std::string htu, str("htu"));
  VCRYPT_ASSIGN_OR_RETURN(std::string ath, str("ath"));
  VCRYPT_ASSIGN_OR_RETURN(std::string tk, str("tk"));
  if (htu != path)
    return ProofError(ErrorCode::kPermissionDenied,
                      "made for another endpoint");
  if (ath != B64Sha256(Bytes(token)))
    return ProofError(ErrorCode::kPermissionDenied, "made for another token");
  if (tk != B64Sha256(transport_point))
    return ProofError(ErrorCode::kPermissionDenied,
                      "made for another transport key");
  auto ch = c.find("ch");
  if (ciphertext.empty() != (ch == c.end()) ||
      (ch != c.end() && (!ch->is_string() || ch->get<std::string>() !=
                                                 B64Sha256(Bytes(ciphertext)))))
    return ProofError(ErrorCode::kPermissionDenied,
                      "made for another KEK ciphertext");
  const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(
                            now.time_since_epoch())
                            .count();
  const int64_t age = now_s - out.iat;
  if (age > kProofMaxAge.count() || age < -kProofMaxAge.count())
    return ProofError(ErrorCode::kPermissionDenied,
                      "too old or from the future (more than " +
                          std::to_string(kProofMaxAge.count()) + " s)");
  return out;
}

}  // namespace vcrypt
