// Attestation tokens: JWS compact serialisation, ES256 only
// (docs/trusted.md, "Token").
//
// The attestation service signs a token after a good quote; the key
// provider service verifies it before it releases a KEK. A token is
//
//   b64url({"alg":"ES256","kid":<thumbprint>,"typ":"JWT"}) "."
//   b64url(claims) "." b64url(r || s)
//
// Why hand-written and not a JWT library: the one thing this code must do
// is refuse everything but one algorithm with one pinned key, and most JWT
// bugs come from the generality this does not need (the header choosing
// the algorithm, "none", HS256 keyed with the public key, keys fetched or
// embedded via jku/jwk/x5u, lenient base64 and JSON). Here the algorithm
// and key are fixed by the verifier before the token is looked at,
// parsing is strict (one encoding per value, no duplicate JSON members),
// and the whole surface is this header, small enough to review and fuzz
// (fuzz/jws_fuzz.cc). The crypto is OpenSSL's.
//
// Error codes of VerifyToken (each refusal is one line that names the
// check; token contents are never echoed):
//   kInvalidArgument   malformed: size, segments, base64url, JSON,
//                      duplicate members, missing or mistyped claims,
//                      unknown header members; also a bad TokenPolicy
//   kCrypto            algorithm or key: alg other than ES256, crit,
//                      key-carrying headers, kid of another key, bad
//                      signature size/range, signature does not verify
//   kPermissionDenied  authentic but not acceptable here: issuer,
//                      audience, expired, not yet valid, lifetime too long
#ifndef VCRYPT_TAPROTOCOL_JWS_H_
#define VCRYPT_TAPROTOCOL_JWS_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <span>
#include <string_view>
#include <vector>

#include "common/handles.h"
#include "common/result.h"
#include "common/secure_buffer.h"

namespace vcrypt {

// Tokens longer than this are refused before any parsing. Ours are about
// 500 bytes; the limit bounds the work an unauthenticated caller can ask
// for.
inline constexpr size_t kMaxTokenSize = 8 * 1024;

// A P-256 public key: the verifier's pinned key. Copies share the
// underlying (immutable, reference-counted) OpenSSL key; concurrent use
// from several threads is safe.
class EcVerifyKey {
 public:
  // Parses a "PUBLIC KEY" (SubjectPublicKeyInfo) PEM. Refuses any key that
  // is not a valid point on P-256 (kInvalidArgument).
  static Result<EcVerifyKey> FromPublicPem(std::string_view pem);
  // From an uncompressed point (65 bytes, 0x04 || x || y): a host's
  // session key as carried in a token's `cnf` claim. kInvalidArgument
  // unless it is a valid point on P-256.
  static Result<EcVerifyKey> FromPoint(std::span<const uint8_t> point);

  Result<std::string> ToPublicPem() const;
  // The uncompressed point, 65 bytes.
  Result<std::vector<uint8_t>> Point() const;
  // RFC 7638 JWK SHA-256 thumbprint, base64url (43 characters): the `kid`.
  const std::string& Thumbprint() const { return thumbprint_; }
  // For OpenSSL calls this header does not wrap; owned by this object.
  EVP_PKEY* pkey() const { return pkey_.get(); }

  EcVerifyKey(const EcVerifyKey& other);
  EcVerifyKey& operator=(const EcVerifyKey& other);
  EcVerifyKey(EcVerifyKey&&) noexcept = default;
  EcVerifyKey& operator=(EcVerifyKey&&) noexcept = default;

 private:
  friend class EcSigningKey;
  EcVerifyKey(EvpPkeyPtr pkey, std::string thumbprint)
      : pkey_(std::move(pkey)), thumbprint_(std::move(thumbprint)) {}
  EvpPkeyPtr pkey_;
  std::string thumbprint_;
};

// A P-256 private key: the attestation service's token signing key, shared
// by its replicas as a PEM file. Move-only. The private scalar lives in
// OpenSSL's key object (freed with BN_clear_free) and, as PEM text, only
// in SecureBuffer.
class EcSigningKey {
 public:
  static Result<EcSigningKey> Generate();
  // Parses an unencrypted "PRIVATE KEY" (PKCS#8) or "EC PRIVATE KEY" PEM.
  // Encrypted PEMs are refused (never a passphrase prompt). The key must be
  // on P-256 and pass OpenSSL's consistency check (kInvalidArgument).
  static Result<EcSigningKey> FromPrivatePem(const SecureBuffer& pem);

  // PKCS#8 "PRIVATE KEY" PEM, unencrypted: the caller writes it to a file
  // only the service can read.
  Result<SecureBuffer> ToPrivatePem() const;
  Result<std::string> ToPublicPem() const { return public_.ToPublicPem(); }
  Result<std::vector<uint8_t>> PublicPoint() const { return public_.Point(); }
  const std::string& Thumbprint() const { return public_.Thumbprint(); }
  // The matching public key, to pin in the verifier.
  const EcVerifyKey& VerifyKey() const { return public_; }
  // For OpenSSL calls this header does not wrap (tests, the fuzz harness's
  // raw signer); owned by this object.
  EVP_PKEY* pkey() const { return pkey_.get(); }

  EcSigningKey(EcSigningKey&&) noexcept = default;
  EcSigningKey& operator=(EcSigningKey&&) noexcept = default;

 private:
  EcSigningKey(EvpPkeyPtr pkey, EcVerifyKey pub)
      : pkey_(std::move(pkey)), public_(std::move(pub)) {}
  static Result<EcSigningKey> FromPkey(EvpPkeyPtr pkey);
  EvpPkeyPtr pkey_;
  EcVerifyKey public_;
};

// Signs `claims` (a JSON object; kInvalidArgument otherwise, e.g. on
// strings that are not UTF-8) into a compact JWS with the protected header
// exactly {"alg":"ES256","kid":<key.Thumbprint()>,"typ":"JWT"} and the
// signature in JOSE form (r || s, 64 bytes), all base64url without
// padding. It adds no claims: the caller sets iss, sub, aud, iat, exp, jti
// and baseline.
Result<std::string> SignToken(const EcSigningKey& key,
                              const nlohmann::json& claims);

// The uncompressed point (65 bytes) of any P-256 key, public or private.
Result<std::vector<uint8_t>> EncodeP256Point(EVP_PKEY* pkey);

// The JWS layer shared by attestation tokens and request proofs
// (taprotocol/proof.h): a compact JWS whose protected header is exactly
// {"alg":"ES256","kid":<key.Thumbprint()>,"typ":<typ>}.
Result<std::string> SignJws(const EcSigningKey& key, std::string_view typ,
                            const nlohmann::json& claims);
// Steps 1-3 of VerifyToken below with `typ` as the only accepted type, then
// the payload parsed strictly (a JSON object, no duplicate members). The
// caller checks the claims. `what` names the object in error messages.
Result<nlohmann::json> VerifyJws(std::string_view jws, const EcVerifyKey& key,
                                 std::string_view typ, std::string_view what);

struct TokenPolicy {
  std::string issuer;    // required `iss`
  std::string audience;  // required in `aud` (a string or an array)
  // Tolerated clock difference between the issuer and this verifier.
  std::chrono::seconds leeway{30};
  // Longest accepted exp - iat: a token minted with a long life (a bug or
  // a stolen signing key used carelessly) is refused.
  std::chrono::seconds max_lifetime{600};
};

struct AttestationClaims {
  std::string iss;
  std::string sub;       // the host
  std::string aud;       // the policy's audience
  std::string jti;       // unique; the caller must consume it (single use)
  std::string baseline;  // the baseline the quote matched
  int64_t iat = 0;       // seconds since the epoch
  int64_t exp = 0;
  // The host's session key the token is bound to (RFC 7800 `cnf` with a
  // P-256 `jwk`), as an uncompressed point; empty when the token has no
  // `cnf`. The key provider service requires it (proof of possession,
  // taprotocol/proof.h).
  std::vector<uint8_t> cnf_point;
};

// Verifies `token` against the pinned `key` and `policy` at time `now`;
// returns the claims only if every check passes. The checks, in order:
//  1. size <= kMaxTokenSize; exactly three '.'-separated segments, each
//     strict base64url (Base64UrlDecode).
//  2. Header (before any crypto): a JSON object without duplicate members;
//     `alg` exactly "ES256"; no `crit`; no key-carrying member (`jku`,
//     `jwk`, `x5u`, `x5c`); `kid`, if present, equal to key.Thumbprint();
//     `typ`, if present, "JWT"; no other member.
//  3. Signature exactly 64 bytes, r and s each in [1, n-1], and valid for
//     "header.payload" under `key`.
//  4. Payload (only now parsed): a JSON object without duplicate members;
//     `iss`, `sub`, `jti`, `baseline` non-empty strings without control
//     characters; `iss` == policy.issuer; `aud` == policy.audience or an
//     array of strings containing it; `iat`, `exp` integers with
//     iat < exp, exp > now - leeway, iat <= now + leeway,
//     exp - iat <= max_lifetime; `nbf`, if present, an integer
//     <= now + leeway; `cnf`, if present, exactly {"jwk": {"kty":"EC",
//     "crv":"P-256","x","y"}} with a valid point. Other claims are ignored.
// It does not consume `jti`: after this succeeds the caller records it as
// used (the Trust Authority's TaStore::ConsumeOnce,
// trustauthority/store.h, kept past exp for at least policy.leeway) and
// refuses the token unless it was the first use.
Result<AttestationClaims> VerifyToken(
    std::string_view token, const EcVerifyKey& key, const TokenPolicy& policy,
    std::chrono::system_clock::time_point now);

}  // namespace vcrypt

#endif  // VCRYPT_TAPROTOCOL_JWS_H_
