// libFuzzer target for VerifyToken (taprotocol/jws.h): the key
// provider service runs it on every request body, before anything else
// is known about the caller. It must never crash, leak or hit UB,
// whatever the bytes; the result itself is ignored.
//
// Two modes, by the first input byte:
//   even  the rest is the token, verified as is. Random bytes almost never
//         get past the signature, so this covers framing, base64url, the
//         header JSON and the signature checks.
//   odd   the rest is "HEADER-JSON \xff PAYLOAD-JSON"; the harness
//         base64url-encodes both and signs them with the pinned key, so
//         the fuzzer also reaches the header rules and the claim checks
//         behind a valid signature.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>

#include "common/base64.h"
#include "common/handles.h"
#include "common/secure_buffer.h"
#include "taprotocol/jws.h"

namespace {

// A throwaway P-256 key made for this harness only.
constexpr std::string_view kFuzzKeyPem =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgqpgwtdz3iCo+cSBM\n"
    "wes24AN2T2gbn2aNnPXLlmyD0FWhRANCAAQ0FrSLp6dSJiK/1IXTETuY2lvya7KS\n"
    "IU30+z5ruNT5sn0LLMSg/QJPbyC8Ku+CnUvoktm2jWYGHhltBat0wClB\n"
    "-----END PRIVATE KEY-----\n";

const vcrypt::EcSigningKey& Key() {
  static const vcrypt::EcSigningKey* key = [] {
    auto pem = vcrypt::SecureBuffer::CopyOf(std::span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(kFuzzKeyPem.data()),
        kFuzzKeyPem.size()));
    auto k = vcrypt::EcSigningKey::FromPrivatePem(pem);
    if (!k.ok()) std::abort();  // the harness itself is broken
    return new vcrypt::EcSigningKey(std::move(k).value());
  }();
  return *key;
}

std::string B64(std::string_view s) {
  return vcrypt::Base64UrlEncode(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

// base64url(r || s) over `input`: ES256 as JOSE wants it, for arbitrary
// header and payload bytes (SignToken only signs its own header and
// well-formed claims). Empty on failure.
std::string SignRaw(const vcrypt::EcSigningKey& key, std::string_view input) {
  vcrypt::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  unsigned char der[128];
  size_t der_len = sizeof(der);
  if (!ctx ||
      EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr,
                         key.pkey()) != 1 ||
      EVP_DigestSign(ctx.get(), der, &der_len,
                     reinterpret_cast<const unsigned char*>(input.data()),
                     input.size()) != 1) {
    return {};
  }
  const unsigned char* p = der;
  vcrypt::EcdsaSigPtr sig(
      d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len)));
  if (!sig) return {};
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  uint8_t raw[64];
  if (BN_bn2binpad(r, raw, 32) != 32 || BN_bn2binpad(s, raw + 32, 32) != 32) {
    return {};
  }
  return vcrypt::Base64UrlEncode(raw);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const vcrypt::TokenPolicy policy{"vcrypt-attestation", "vcrypt-kps"};
  static const std::chrono::system_clock::time_point now{
      std::chrono::seconds(1'800'000'000)};
  const vcrypt::EcSigningKey& key = Key();
  std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);

  if ((data[0] & 1) == 0) {
    (void)vcrypt::VerifyToken(rest, key.VerifyKey(), policy, now);
    return 0;
  }
  size_t sep = rest.find('\xff');
  std::string_view header = rest.substr(0, sep);
  std::string_view payload =
      sep == std::string_view::npos ? std::string_view() : rest.substr(sep + 1);
  std::string input = B64(header) + "." + B64(payload);
  std::string sig = SignRaw(key, input);
  if (sig.empty()) std::abort();
  (void)vcrypt::VerifyToken(input + "." + sig, key.VerifyKey(), policy, now);
  return 0;
}
