// JWS ES256 tokens: keys, signing, and verification with a pinned
// algorithm. (Single use of ids, server state, is trustauthority/store.h.)
#include "taprotocol/jws.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include <array>
#include <cstring>
#include <limits>
#include <set>
#include <span>
#include <vector>

#include "common/base64.h"

namespace vcrypt {
namespace {

using nlohmann::json;

constexpr size_t kCoordinateSize = 32;  // P-256 field and scalar size
constexpr size_t kSignatureSize = 2 * kCoordinateSize;
// PEM texts are a few hundred bytes; the cap keeps the int casts for BIO
// calls trivially safe.
constexpr size_t kMaxPemSize = 64 * 1024;

// The order n of the P-256 group, big-endian (SEC 2, secp256r1).
constexpr std::array<uint8_t, kCoordinateSize> kP256Order = {
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
    0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// OpenSSL leaves reasons on its thread-local error queue; drop them so a
// later, unrelated ERR_get_error() does not report our failure.
Error SslError(ErrorCode code, std::string message) {
  ERR_clear_error();
  return MakeError(code, std::move(message));
}

Error TokenError(ErrorCode code, std::string_view what) {
  ERR_clear_error();
  return MakeError(code, "attestation token: " + std::string(what));
}

// Passphrase callback that refuses: without it OpenSSL would prompt on the
// terminal for an encrypted PEM.
int NoPassphrase(char*, int, int, void*) { return -1; }

bool IsP256(EVP_PKEY* pkey) {
  if (EVP_PKEY_is_a(pkey, "EC") != 1) return false;
  char name[64] = {};
  size_t len = 0;
  if (EVP_PKEY_get_group_name(pkey, name, sizeof(name), &len) != 1) {
    return false;
  }
  return std::string_view(name, len) == "prime256v1";
}

Result<std::string> ComputeThumbprint(EVP_PKEY* pkey) {
  BIGNUM* x_raw = nullptr;
  BIGNUM* y_raw = nullptr;
  int ok_x = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_X, &x_raw);
  int ok_y = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &y_raw);
  BignumPtr x(x_raw), y(y_raw);
  std::array<uint8_t, kCoordinateSize> xb{}, yb{};
  if (ok_x != 1 || ok_y != 1 ||
      BN_bn2binpad(x.get(), xb.data(), xb.size()) != int{kCoordinateSize} ||
      BN_bn2binpad(y.get(), yb.data(), yb.size()) != int{kCoordinateSize}) {
    return SslError(ErrorCode::kInternal,
                    "cannot read the coordinates of an EC public key");
  }
  // RFC 7638: the required members only, in lexicographic order, no
  // whitespace. Base64url output needs no JSON escaping.
  std::string jwk = R"({"crv":"P-256","kty":"EC","x":")" + Base64UrlEncode(xb) +
                    R"(","y":")" + Base64UrlEncode(yb) + R"("})";
  std::array<uint8_t, EVP_MAX_MD_SIZE> md{};
  unsigned int md_len = 0;
  if (EVP_Digest(jwk.data(), jwk.size(), md.data(), &md_len, EVP_sha256(),
                 nullptr) != 1) {
    return SslError(ErrorCode::kInternal, "SHA-256 failed");
  }
  return Base64UrlEncode(std::span<const uint8_t>(md.data(), md_len));
}

// A public-only copy of `pkey` (via SubjectPublicKeyInfo DER), so that the
// verify key handed out by a signing key never references the private
// scalar.
Result<EvpPkeyPtr> PublicOnly(EVP_PKEY* pkey) {
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(pkey, &der);
  OpensslBytePtr der_owner(der);
  if (len <= 0) {
    return SslError(ErrorCode::kInternal, "cannot encode an EC public key");
  }
  const unsigned char* p = der;
  EvpPkeyPtr pub(d2i_PUBKEY(nullptr, &p, len));
  if (!pub) {
    return SslError(ErrorCode::kInternal, "cannot decode an EC public key");
  }
  return pub;
}

// Returns the 64-byte JOSE signature (r || s) of SHA-256(input).
Result<std::array<uint8_t, kSignatureSize>> SignEs256(EVP_PKEY* pkey,
                                                      std::string_view input) {
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  size_t der_len = 0;
  if (!ctx ||
      EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, pkey) !=
          1 ||
      EVP_DigestSign(ctx.get(), nullptr, &der_len, Bytes(input).data(),
                     input.size()) != 1) {
    return SslError(ErrorCode::kCrypto, "ES256 signing failed");
  }
  std::vector<uint8_t> der(der_len);
  if (EVP_DigestSign(ctx.get(), der.data(), &der_len, Bytes(input).data(),
                     input.size()) != 1) {
    return SslError(ErrorCode::kCrypto, "ES256 signing failed");
  }
  // OpenSSL produces DER (SEQUENCE of two INTEGERs); JOSE wants the two
  // integers as fixed-width big-endian halves.
  const unsigned char* p = der.data();
  EcdsaSigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len)));
  if (!sig)
    return SslError(ErrorCode::kInternal, "cannot parse an ECDSA signature");
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  std::array<uint8_t, kSignatureSize> out{};
  if (BN_bn2binpad(r, out.data(), kCoordinateSize) != int{kCoordinateSize} ||
      BN_bn2binpad(s, out.data() + kCoordinateSize, kCoordinateSize) !=
          int{kCoordinateSize}) {
    return SslError(ErrorCode::kInternal, "ECDSA signature out of range");
  }
  return out;
}

// 1 <= v <= n - 1 for a 32-byte big-endian v. Checked here, before
// OpenSSL, so that such a signature gets its own clear refusal; OpenSSL
// would refuse it too.
bool InScalarRange(std::span<const uint8_t> v) {
  bool zero = true;
  for (uint8_t b : v) zero = zero && b == 0;
  return !zero && std::memcmp(v.data(), kP256Order.data(), kCoordinateSize) < 0;
}

Status VerifyEs256(EVP_PKEY* pkey, std::string_view input,
                   std::span<const uint8_t> sig) {
  if (sig.size() != kSignatureSize) {
    return TokenError(ErrorCode::kCrypto,
                      "signature is not 64 bytes (ES256 needs r || s; a DER "
                      "signature is refused)");
  }
  auto r_bytes = sig.first(kCoordinateSize);
  auto s_bytes = sig.last(kCoordinateSize);
  if (!InScalarRange(r_bytes) || !InScalarRange(s_bytes)) {
    return TokenError(ErrorCode::kCrypto,
                      "signature value r or s is outside [1, n-1]");
  }
  BignumPtr r(BN_bin2bn(r_bytes.data(), kCoordinateSize, nullptr));
  BignumPtr s(BN_bin2bn(s_bytes.data(), kCoordinateSize, nullptr));
  EcdsaSigPtr ecdsa(ECDSA_SIG_new());
  if (!r || !s || !ecdsa ||
      ECDSA_SIG_set0(ecdsa.get(), r.get(), s.get()) != 1) {
    return SslError(ErrorCode::kInternal, "out of memory");
  }
  // ECDSA_SIG_set0 took ownership.
  (void)r.release();
  (void)s.release();
  unsigned char* der = nullptr;
  int der_len = i2d_ECDSA_SIG(ecdsa.get(), &der);
  OpensslBytePtr der_owner(der);
  if (der_len <= 0) {
    return SslError(ErrorCode::kInternal, "cannot encode an ECDSA signature");
  }
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr,
                                   pkey) != 1) {
    return SslError(ErrorCode::kInternal, "cannot set up ES256 verification");
  }
  if (EVP_DigestVerify(ctx.get(), der, static_cast<size_t>(der_len),
                       Bytes(input).data(), input.size()) != 1) {
    return TokenError(ErrorCode::kCrypto,
                      "signature does not verify with the pinned key");
  }
  return Status::Ok();
}

// Parses `bytes` as a JSON object, refusing duplicate member names at any
// depth: RFC 8259 leaves their meaning open and parsers disagree (first or
// last wins), so a duplicate could make two readers of one token see
// different claims.
Result<json> ParseStrictObject(std::span<const uint8_t> bytes,
                               std::string_view what) {
  std::vector<std::set<std::string>> open_objects;
  bool duplicate = false;
  json::parser_callback_t cb = [&](int, json::parse_event_t event,
                                   json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string() &&
            !open_objects.back()
                 .insert(parsed.get_ref<const std::string&>())
                 .second) {
          duplicate = true;
        }
        break;
      default:
        break;
    }
    return true;
  };
  json value;
  try {
    value = json::parse(bytes.begin(), bytes.end(), cb,
                        /*allow_exceptions=*/false);
  } catch (const std::exception&) {
    value = json(json::value_t::discarded);
  }
  if (value.is_discarded()) {
    return TokenError(ErrorCode::kInvalidArgument,
                      std::string(what) + " is not valid JSON");
  }
  if (duplicate) {
    return TokenError(ErrorCode::kInvalidArgument,
                      std::string(what) + " has a duplicate member");
  }
  if (!value.is_object()) {
    return TokenError(ErrorCode::kInvalidArgument,
                      std::string(what) + " is not a JSON object");
  }
  return value;
}

// `typ` must equal `typ_expected` when present; with `typ_required` it
// must be present (request proofs: a token cannot pass as a proof).
Status CheckHeader(const json& header, const EcVerifyKey& key,
                   std::string_view typ_expected, bool typ_required) {
  // The algorithm is the verifier's, not the token's: anything but the
  // exact string "ES256" ("none", "HS256" keyed with the public key,
  // "ES384", "es256", a non-string) is refused here, before any crypto.
  auto alg = header.find("alg");
  if (alg == header.end() || !alg->is_string() ||
      alg->get_ref<const std::string&>() != "ES256") {
    return TokenError(ErrorCode::kCrypto, "alg must be exactly ES256");
  }
  if (header.contains("crit")) {
    return TokenError(ErrorCode::kCrypto,
                      "crit header is not supported (no extensions are)");
  }
  for (const char* name : {"jku", "jwk", "x5u", "x5c"}) {
    if (header.contains(name)) {
      return TokenError(ErrorCode::kCrypto,
                        std::string("header ") + name +
                            " is refused (the verification key is pinned)");
    }
  }
  auto kid = header.find("kid");
  if (kid != header.end() &&
      (!kid->is_string() ||
       kid->get_ref<const std::string&>() != key.Thumbprint())) {
    return TokenError(ErrorCode::kCrypto,
                      "kid is not the pinned key's thumbprint");
  }
  auto typ = header.find("typ");
  if ((typ == header.end() && typ_required) ||
      (typ != header.end() && (!typ->is_string() ||
                               typ->get_ref<const std::string&>() !=
                                   typ_expected))) {
    return TokenError(ErrorCode::kInvalidArgument,
                      "typ must be " + std::string(typ_expected));
  }
  for (const auto& item : header.items()) {
    const std::string& k = item.key();
    if (k != "alg" && k != "kid" && k != "typ") {
      return TokenError(ErrorCode::kInvalidArgument,
                        "unexpected member in the header");
    }
  }
  return Status::Ok();
}

Result<std::string> StringClaim(const json& claims, const char* name) {
  auto it = claims.find(name);
  if (it == claims.end() || !it->is_string() ||
      it->get_ref<const std::string&>().empty()) {
    return TokenError(
        ErrorCode::kInvalidArgument,
        std::string("claim ") + name + " is missing or not a non-empty string");
  }
  const std::string& v = it->get_ref<const std::string&>();
  // These end up in logs and state lookups: no control characters.
  for (unsigned char c : v) {
    if (c < 0x20 || c == 0x7f) {
      return TokenError(
          ErrorCode::kInvalidArgument,
          std::string("claim ") + name + " contains a control character");
    }
  }
  return v;
}

Result<int64_t> IntClaim(const json& claims, const char* name) {
  auto it = claims.find(name);
  if (it == claims.end() || !it->is_number_integer()) {
    return TokenError(
        ErrorCode::kInvalidArgument,
        std::string("claim ") + name + " is missing or not an integer");
  }
  if (it->is_number_unsigned()) {
    uint64_t u = it->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TokenError(ErrorCode::kInvalidArgument,
                        std::string("claim ") + name + " is out of range");
    }
    return static_cast<int64_t>(u);
  }
  return it->get<int64_t>();
}

// RFC 7800 confirmation key: {"jwk": {"kty":"EC","crv":"P-256","x","y"}}
// and nothing else, as an uncompressed point (checked on the curve).
Result<std::vector<uint8_t>> CnfPoint(const json& cnf) {
  auto bad = [] {
    return TokenError(ErrorCode::kInvalidArgument,
                      "claim cnf is not {\"jwk\": P-256 public key}");
  };
  if (!cnf.is_object() || cnf.size() != 1 || !cnf.contains("jwk")) return bad();
  const json& jwk = cnf["jwk"];
  if (!jwk.is_object() || jwk.size() != 4 || jwk.value("kty", "") != "EC" ||
      jwk.value("crv", "") != "P-256" || !jwk.contains("x") ||
      !jwk["x"].is_string() || !jwk.contains("y") || !jwk["y"].is_string())
    return bad();
  auto x = Base64UrlDecode(jwk["x"].get<std::string>());
  auto y = Base64UrlDecode(jwk["y"].get<std::string>());
  if (!x.ok() || !y.ok() || x->size() != kCoordinateSize ||
      y->size() != kCoordinateSize)
    return bad();
  std::vector<uint8_t> point{0x04};
  point.insert(point.end(), x->begin(), x->end());
  point.insert(point.end(), y->begin(), y->end());
  if (!EcVerifyKey::FromPoint(point).ok()) return bad();
  return point;
}

Result<AttestationClaims> CheckClaims(const json& claims,
                                      const TokenPolicy& policy, int64_t now) {
  AttestationClaims out;
  VCRYPT_ASSIGN_OR_RETURN(out.iss, StringClaim(claims, "iss"));
  VCRYPT_ASSIGN_OR_RETURN(out.sub, StringClaim(claims, "sub"));
  VCRYPT_ASSIGN_OR_RETURN(out.jti, StringClaim(claims, "jti"));
  VCRYPT_ASSIGN_OR_RETURN(out.baseline, StringClaim(claims, "baseline"));
  VCRYPT_ASSIGN_OR_RETURN(out.iat, IntClaim(claims, "iat"));
  VCRYPT_ASSIGN_OR_RETURN(out.exp, IntClaim(claims, "exp"));

  if (out.iss != policy.issuer) {
    return TokenError(ErrorCode::kPermissionDenied,
                      "issuer is not " + policy.issuer);
  }
  // RFC 7519: aud is a string or an array of strings.
  auto aud = claims.find("aud");
  bool aud_ok = false;
  if (aud == claims.end()) {
    return TokenError(ErrorCode::kInvalidArgument, "claim aud is missing");
  } else if (aud->is_string()) {
    aud_ok = aud->get_ref<const std::string&>() == policy.audience;
  } else if (aud->is_array()) {
    for (const auto& a : *aud) {
      if (!a.is_string()) {
        return TokenError(ErrorCode::kInvalidArgument,
                          "claim aud has a member that is not a string");
      }
      aud_ok = aud_ok || a.get_ref<const std::string&>() == policy.audience;
    }
  } else {
    return TokenError(ErrorCode::kInvalidArgument,
                      "claim aud is neither a string nor an array");
  }
  if (!aud_ok) {
    return TokenError(ErrorCode::kPermissionDenied,
                      "audience does not include " + policy.audience);
  }
  out.aud = policy.audience;

  // Overflow-checked: the claims are attacker-chosen int64 values.
  const int64_t leeway = policy.leeway.count();
  int64_t earliest = 0, latest = 0, lifetime = 0;
  if (__builtin_sub_overflow(now, leeway, &earliest) ||
      __builtin_add_overflow(now, leeway, &latest)) {
    return TokenError(ErrorCode::kInvalidArgument, "time out of range");
  }
  if (out.exp <= out.iat) {
    return TokenError(ErrorCode::kInvalidArgument, "exp is not after iat");
  }
  if (out.exp <= earliest) {
    return TokenError(ErrorCode::kPermissionDenied, "expired (exp has passed)");
  }
  if (out.iat > latest) {
    return TokenError(ErrorCode::kPermissionDenied,
                      "not yet valid (iat is in the future)");
  }
  if (__builtin_sub_overflow(out.exp, out.iat, &lifetime) ||
      lifetime > policy.max_lifetime.count()) {
    return TokenError(ErrorCode::kPermissionDenied,
                      "lifetime exp - iat is longer than " +
                          std::to_string(policy.max_lifetime.count()) + " s");
  }
  if (claims.contains("nbf")) {
    VCRYPT_ASSIGN_OR_RETURN(int64_t nbf, IntClaim(claims, "nbf"));
    if (nbf > latest) {
      return TokenError(ErrorCode::kPermissionDenied,
                        "not yet valid (nbf is in the future)");
    }
  }
  if (claims.contains("cnf")) {
    VCRYPT_ASSIGN_OR_RETURN(out.cnf_point, CnfPoint(claims["cnf"]));
  }
  return out;
}

}  // namespace

// --- keys -------------------------------------------------------------------

EcVerifyKey::EcVerifyKey(const EcVerifyKey& other)
    : thumbprint_(other.thumbprint_) {
  if (other.pkey_ && EVP_PKEY_up_ref(other.pkey_.get()) == 1) {
    pkey_.reset(other.pkey_.get());
  }
}

EcVerifyKey& EcVerifyKey::operator=(const EcVerifyKey& other) {
  if (this != &other) *this = EcVerifyKey(other);
  return *this;
}

Result<EcVerifyKey> EcVerifyKey::FromPublicPem(std::string_view pem) {
  if (pem.empty() || pem.size() > kMaxPemSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "public key PEM is empty or too large");
  }
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return SslError(ErrorCode::kInternal, "out of memory");
  EvpPkeyPtr pkey(
      PEM_read_bio_PUBKEY(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!pkey) {
    return SslError(ErrorCode::kInvalidArgument,
                    "not a PEM public key (expected BEGIN PUBLIC KEY)");
  }
  if (!IsP256(pkey.get())) {
    return SslError(ErrorCode::kInvalidArgument,
                    "public key is not an EC P-256 key (ES256 needs P-256)");
  }
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
  if (!ctx || EVP_PKEY_public_check(ctx.get()) != 1) {
    return SslError(ErrorCode::kInvalidArgument,
                    "public key is not a valid P-256 point");
  }
  VCRYPT_ASSIGN_OR_RETURN(std::string thumbprint,
                          ComputeThumbprint(pkey.get()));
  return EcVerifyKey(std::move(pkey), std::move(thumbprint));
}

Result<EcVerifyKey> EcVerifyKey::FromPoint(std::span<const uint8_t> point) {
  if (point.size() != 1 + 2 * kCoordinateSize || point[0] != 0x04) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "not an uncompressed P-256 point");
  }
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME,
                                      "P-256", 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                       point.data(), point.size()) != 1) {
    return SslError(ErrorCode::kInternal, "out of memory");
  }
  OsslParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) !=
          1) {
    return SslError(ErrorCode::kInvalidArgument, "not a valid P-256 point");
  }
  EvpPkeyPtr pkey(raw);
  // fromdata does not check that the point is on the curve.
  EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
  if (!check || EVP_PKEY_public_check(check.get()) != 1) {
    return SslError(ErrorCode::kInvalidArgument, "not a valid P-256 point");
  }
  VCRYPT_ASSIGN_OR_RETURN(std::string thumbprint,
                          ComputeThumbprint(pkey.get()));
  return EcVerifyKey(std::move(pkey), std::move(thumbprint));
}

Result<std::vector<uint8_t>> EcVerifyKey::Point() const {
  return EncodeP256Point(pkey_.get());
}

Result<std::vector<uint8_t>> EncodeP256Point(EVP_PKEY* pkey) {
  std::vector<uint8_t> p(1 + 2 * kCoordinateSize);
  size_t len = 0;
  if (pkey == nullptr || !IsP256(pkey) ||
      EVP_PKEY_get_octet_string_param(pkey,
                                      OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                      p.data(), p.size(), &len) != 1 ||
      len != p.size()) {
    return SslError(ErrorCode::kInternal, "cannot encode a P-256 point");
  }
  return p;
}

Result<std::string> EcVerifyKey::ToPublicPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || !pkey_ || PEM_write_bio_PUBKEY(bio.get(), pkey_.get()) != 1) {
    return SslError(ErrorCode::kInternal, "cannot write the public key PEM");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0) return SslError(ErrorCode::kInternal, "empty public key PEM");
  return std::string(data, static_cast<size_t>(len));
}

Result<EcSigningKey> EcSigningKey::FromPkey(EvpPkeyPtr pkey) {
  if (!IsP256(pkey.get())) {
    return SslError(ErrorCode::kInvalidArgument,
                    "private key is not an EC P-256 key (ES256 needs P-256)");
  }
  // Full check: scalar in range and the public point matches it (a PEM
  // may carry both, and they could disagree).
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
  if (!ctx || EVP_PKEY_check(ctx.get()) != 1) {
    return SslError(ErrorCode::kInvalidArgument,
                    "private key fails the P-256 consistency check");
  }
  VCRYPT_ASSIGN_OR_RETURN(EvpPkeyPtr pub, PublicOnly(pkey.get()));
  VCRYPT_ASSIGN_OR_RETURN(std::string thumbprint, ComputeThumbprint(pub.get()));
  return EcSigningKey(std::move(pkey),
                      EcVerifyKey(std::move(pub), std::move(thumbprint)));
}

Result<EcSigningKey> EcSigningKey::Generate() {
  EvpPkeyPtr pkey(EVP_EC_gen("P-256"));
  if (!pkey) return SslError(ErrorCode::kCrypto, "P-256 key generation failed");
  return FromPkey(std::move(pkey));
}

Result<EcSigningKey> EcSigningKey::FromPrivatePem(const SecureBuffer& pem) {
  if (pem.empty() || pem.size() > kMaxPemSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "private key PEM is empty or too large");
  }
  // A read-only memory BIO over the SecureBuffer: no copy of the PEM text.
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return SslError(ErrorCode::kInternal, "out of memory");
  EvpPkeyPtr pkey(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!pkey) {
    return SslError(ErrorCode::kInvalidArgument,
                    "not an unencrypted PEM private key (expected BEGIN "
                    "PRIVATE KEY or BEGIN EC PRIVATE KEY)");
  }
  return FromPkey(std::move(pkey));
}

Result<SecureBuffer> EcSigningKey::ToPrivatePem() const {
  // A secure-heap memory BIO: OpenSSL wipes its buffer when it grows and
  // when it is freed.
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio || !pkey_ ||
      PEM_write_bio_PrivateKey(bio.get(), pkey_.get(), nullptr, nullptr, 0,
                               nullptr, nullptr) != 1) {
    return SslError(ErrorCode::kInternal, "cannot write the private key PEM");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0) return SslError(ErrorCode::kInternal, "empty private key PEM");
  return SecureBuffer::CopyOf(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(len)));
}

// --- tokens -----------------------------------------------------------------

Result<std::string> SignJws(const EcSigningKey& key, std::string_view typ,
                            const json& claims) {
  if (!claims.is_object()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "token claims must be a JSON object");
  }
  std::string payload;
  try {
    payload = claims.dump(-1, ' ', false, json::error_handler_t::strict);
  } catch (const json::exception&) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "token claims contain a string that is not UTF-8");
  }
  // Written by hand so the header is exactly these bytes; the thumbprint
  // is base64url and the types are ours, so nothing needs JSON escaping.
  const std::string header = R"({"alg":"ES256","kid":")" + key.Thumbprint() +
                             R"(","typ":")" + std::string(typ) + R"("})";
  std::string token =
      Base64UrlEncode(Bytes(header)) + "." + Base64UrlEncode(Bytes(payload));
  VCRYPT_ASSIGN_OR_RETURN(auto sig, SignEs256(key.pkey(), token));
  token += "." + Base64UrlEncode(sig);
  if (token.size() > kMaxTokenSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "token would exceed " + std::to_string(kMaxTokenSize) +
                         " bytes, which verifiers refuse");
  }
  return token;
}

Result<std::string> SignToken(const EcSigningKey& key, const json& claims) {
  return SignJws(key, "JWT", claims);
}

namespace {

// Steps 1-3 of VerifyToken and the strict payload parse.
Result<json> VerifyCompact(std::string_view token, const EcVerifyKey& key,
                           std::string_view typ, bool typ_required) {
  if (key.pkey() == nullptr) {
    return MakeError(ErrorCode::kInvalidArgument, "no verification key");
  }
  if (token.size() > kMaxTokenSize) {
    return TokenError(
        ErrorCode::kInvalidArgument,
        "longer than " + std::to_string(kMaxTokenSize) + " bytes");
  }
  const size_t dot1 = token.find('.');
  const size_t dot2 =
      dot1 == std::string_view::npos ? dot1 : token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos ||
      token.find('.', dot2 + 1) != std::string_view::npos) {
    return TokenError(ErrorCode::kInvalidArgument,
                      "not three '.'-separated segments (JWS compact)");
  }
  const std::string_view header_b64 = token.substr(0, dot1);
  const std::string_view payload_b64 = token.substr(dot1 + 1, dot2 - dot1 - 1);
  const std::string_view sig_b64 = token.substr(dot2 + 1);
  const std::string_view signing_input = token.substr(0, dot2);

  // Syntax of all three segments first: cheap, and malformed input is
  // reported as such rather than as a bad signature.
  auto header_bytes = Base64UrlDecode(header_b64);
  auto payload_bytes = Base64UrlDecode(payload_b64);
  auto sig = Base64UrlDecode(sig_b64);
  if (!header_bytes.ok() || !payload_bytes.ok() || !sig.ok()) {
    const Error& e = !header_bytes.ok()    ? header_bytes.error()
                     : !payload_bytes.ok() ? payload_bytes.error()
                                           : sig.error();
    const char* segment = !header_bytes.ok()    ? "header"
                          : !payload_bytes.ok() ? "payload"
                                                : "signature";
    return TokenError(ErrorCode::kInvalidArgument,
                      std::string(segment) + ": " + e.message);
  }

  VCRYPT_ASSIGN_OR_RETURN(json header,
                          ParseStrictObject(*header_bytes, "header"));
  VCRYPT_RETURN_IF_ERROR(CheckHeader(header, key, typ, typ_required));
  VCRYPT_RETURN_IF_ERROR(VerifyEs256(key.pkey(), signing_input, *sig));

  // Authenticated from here on.
  return ParseStrictObject(*payload_bytes, "payload");
}

}  // namespace

Result<json> VerifyJws(std::string_view jws, const EcVerifyKey& key,
                       std::string_view typ, std::string_view what) {
  auto r = VerifyCompact(jws, key, typ, /*typ_required=*/true);
  if (r.ok()) return r;
  // TokenError's prefix names tokens; name what this is instead.
  Error e = std::move(r).error();
  static constexpr std::string_view kPrefix = "attestation token: ";
  if (e.message.rfind(kPrefix, 0) == 0)
    e.message = std::string(what) + ": " + e.message.substr(kPrefix.size());
  return e;
}

Result<AttestationClaims> VerifyToken(
    std::string_view token, const EcVerifyKey& key, const TokenPolicy& policy,
    std::chrono::system_clock::time_point now) {
  if (policy.issuer.empty() || policy.audience.empty() ||
      policy.leeway.count() < 0 || policy.max_lifetime.count() <= 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "token policy needs an issuer, an audience, leeway >= 0 "
                     "and max_lifetime > 0");
  }
  VCRYPT_ASSIGN_OR_RETURN(json claims, VerifyCompact(token, key, "JWT",
                                                     /*typ_required=*/false));
  const int64_t now_s =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch())
          .count();
  return CheckClaims(claims, policy, now_s);
}

}  // namespace vcrypt
