// libFuzzer target for the TPM structures the attestation service takes
// from the network (trustauthority/quote.h): ParseQuote, ParseTpm2bPublic
// and VerifyQuote. They must never crash, leak or hit UB, whatever the
// bytes; results are ignored.
//
// Every input goes whole through ParseQuote and ParseTpm2bPublic. Then, by
// the first byte (mode = byte % 5), the rest is used as:
//   0  ATTEST_LEN(2, big endian) ATTEST SIGNATURE: VerifyQuote with the
//      captured fixture AK. Random bytes almost never pass the signature,
//      so this covers TPMT_SIGNATURE parsing and the (r, s) to DER path.
//   1  ATTEST_LEN(2) ATTEST NONCE_LEN(1) NONCE VALUES: the harness signs
//      ATTEST with its own software AK, so the fuzzer also reaches every
//      check behind a valid signature, with a nonce and PCR values (32-byte
//      chunks) of its choosing.
//   2  OFFSET(1) LEN_DELTA(1) PATCH: the captured quote with PATCH written
//      at OFFSET and its length changed by LEN_DELTA (signed), signed with
//      the software AK and checked against the captured nonce and values:
//      mutations of a real quote, so deep paths are reached without a
//      corpus.
//   3  OFFSET(1) PATCH: the captured AK public with PATCH written at
//      OFFSET; if it still parses as a usable AK, the captured quote is
//      verified with it.
//   4  OFFSET(2) NAME_LEN(1) NAME PATCH: the captured (RSA) EK public with
//      PATCH written at OFFSET; if it still parses, MakeCredential for
//      NAME (or the captured AK's Name when NAME_LEN is 0) with it.
//
// The captured quote is tests/fixtures/tpm/ (ak.pub, attest.bin, sig.bin,
// nonce.bin, pcrs.bin, ek.pub, ak.name), embedded at build time as
// tpm_fixture_data.h (fuzz/embed_fixtures.cmake) so that the binary runs
// anywhere and follows regenerations of those files.
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <tss2/tss2_mu.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "common/handles.h"
#include "common/secure_buffer.h"
#include "trustauthority/credential.h"
#include "trustauthority/quote.h"
#include "tpm_fixture_data.h"  // generated: fuzz/embed_fixtures.cmake

namespace {

using Bytes = std::vector<uint8_t>;

using vcrypt_fuzz::kAkName;
using vcrypt_fuzz::kAkPublic;
using vcrypt_fuzz::kAttest;
using vcrypt_fuzz::kEkPublic;
using vcrypt_fuzz::kNonce;
using vcrypt_fuzz::kPcrValues;
using vcrypt_fuzz::kSignature;

// A software P-256 key wrapped as a restricted signing key: it signs what
// the fuzzer builds so that checks after the signature are reached. A real
// TPM never signs such data; this exists only for the harness. Its public
// area is the captured AK's (attributes, scheme, curve) with the software
// key's point as `unique`.
struct SoftwareAk {
  vcrypt::EvpPkeyPtr key;
  vcrypt::TpmPublic pub;
};

SoftwareAk MakeSoftwareAk() {
  SoftwareAk ak;
  ak.key.reset(EVP_EC_gen("P-256"));
  uint8_t point[65];
  size_t len = 0;
  TPM2B_PUBLIC pub{};
  size_t off = 0;
  if (ak.key == nullptr ||
      EVP_PKEY_get_octet_string_param(ak.key.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                      point, sizeof(point), &len) != 1 ||
      len != sizeof(point) ||
      Tss2_MU_TPM2B_PUBLIC_Unmarshal(kAkPublic, sizeof(kAkPublic), &off,
                                     &pub) != TSS2_RC_SUCCESS ||
      pub.publicArea.type != TPM2_ALG_ECC) {
    std::abort();  // the harness itself is broken
  }
  TPMS_ECC_POINT& unique = pub.publicArea.unique.ecc;
  unique.x.size = 32;
  std::memcpy(unique.x.buffer, point + 1, 32);
  unique.y.size = 32;
  std::memcpy(unique.y.buffer, point + 33, 32);
  uint8_t wire[sizeof(TPM2B_PUBLIC)];
  off = 0;
  if (Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, wire, sizeof(wire), &off) !=
      TSS2_RC_SUCCESS) {
    std::abort();
  }
  auto parsed = vcrypt::ParseTpm2bPublic(std::span<const uint8_t>(wire, off));
  if (!parsed.ok()) std::abort();
  ak.pub = std::move(parsed).value();
  return ak;
}

// TPMT_SIGNATURE (ECDSA, SHA-256) over `data` with the software AK.
Bytes Sign(const SoftwareAk& ak, std::span<const uint8_t> data) {
  vcrypt::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  size_t len = 0;
  static const uint8_t kEmpty = 0;
  const uint8_t* p = data.empty() ? &kEmpty : data.data();
  if (ctx == nullptr ||
      EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr,
                         ak.key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, p, data.size()) != 1) {
    std::abort();
  }
  Bytes der(len);
  if (EVP_DigestSign(ctx.get(), der.data(), &len, p, data.size()) != 1) {
    std::abort();
  }
  const unsigned char* q = der.data();
  vcrypt::EcdsaSigPtr sig(d2i_ECDSA_SIG(nullptr, &q, static_cast<long>(len)));
  if (sig == nullptr) std::abort();
  TPMT_SIGNATURE t{};
  t.sigAlg = TPM2_ALG_ECDSA;
  t.signature.ecdsa.hash = TPM2_ALG_SHA256;
  t.signature.ecdsa.signatureR.size = 32;
  t.signature.ecdsa.signatureS.size = 32;
  BN_bn2binpad(ECDSA_SIG_get0_r(sig.get()), t.signature.ecdsa.signatureR.buffer,
               32);
  BN_bn2binpad(ECDSA_SIG_get0_s(sig.get()), t.signature.ecdsa.signatureS.buffer,
               32);
  uint8_t out[sizeof(TPMT_SIGNATURE)];
  size_t off = 0;
  if (Tss2_MU_TPMT_SIGNATURE_Marshal(&t, out, sizeof(out), &off) !=
      TSS2_RC_SUCCESS) {
    std::abort();
  }
  return Bytes(out, out + off);
}

struct Harness {
  vcrypt::TpmPublic fixture_ak;
  SoftwareAk software_ak;
};

const Harness& Get() {
  static const Harness* h = [] {
    auto* harness = new Harness;
    auto ak = vcrypt::ParseTpm2bPublic(kAkPublic);
    if (!ak.ok()) std::abort();
    harness->fixture_ak = std::move(ak).value();
    harness->software_ak = MakeSoftwareAk();
    return harness;
  }();
  return *h;
}

vcrypt::QuoteCheck FixtureCheck(const vcrypt::TpmPublic& ak) {
  vcrypt::QuoteCheck check;
  check.ak = ak;
  check.nonce.assign(std::begin(kNonce), std::end(kNonce));
  check.expected = {TPM2_ALG_SHA256, {0, 1, 2, 3, 7}};
  for (size_t i = 0; i + 32 <= sizeof(kPcrValues); i += 32) {
    check.pcr_values.emplace_back(kPcrValues + i, kPcrValues + i + 32);
  }
  check.last_clock = vcrypt::ClockInfo{0, 0, 0, false};
  return check;
}

// Splits "LEN(2) FIRST REST" (FIRST clamped to what is there).
void SplitLength(std::span<const uint8_t> in, std::span<const uint8_t>* first,
                 std::span<const uint8_t>* rest) {
  if (in.size() < 2) {
    *first = {};
    *rest = {};
    return;
  }
  size_t len = static_cast<size_t>(in[0] << 8 | in[1]);
  in = in.subspan(2);
  len = len < in.size() ? len : in.size();
  *first = in.first(len);
  *rest = in.subspan(len);
}

Bytes Patch(std::span<const uint8_t> base, size_t offset,
            std::span<const uint8_t> patch, int length_delta) {
  Bytes out(base.begin(), base.end());
  offset = offset < out.size() ? offset : out.size();
  for (size_t i = 0; i < patch.size(); ++i) {
    if (offset + i < out.size()) {
      out[offset + i] = patch[i];
    } else {
      out.push_back(patch[i]);
    }
  }
  if (length_delta < 0) {
    const size_t cut = static_cast<size_t>(-length_delta);
    out.resize(cut < out.size() ? out.size() - cut : 0);
  } else {
    out.resize(out.size() + static_cast<size_t>(length_delta), 0);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> input(data, size);
  (void)vcrypt::ParseQuote(input);
  (void)vcrypt::ParseTpm2bPublic(input);
  if (input.empty()) return 0;

  const Harness& h = Get();
  const std::span<const uint8_t> rest = input.subspan(1);
  switch (input[0] % 5) {
    case 0: {
      std::span<const uint8_t> attest, signature;
      SplitLength(rest, &attest, &signature);
      (void)vcrypt::VerifyQuote(attest, signature, FixtureCheck(h.fixture_ak));
      break;
    }
    case 1: {
      std::span<const uint8_t> attest, tail;
      SplitLength(rest, &attest, &tail);
      vcrypt::QuoteCheck check = FixtureCheck(h.software_ak.pub);
      if (!tail.empty()) {
        const size_t nonce_len =
            tail[0] < tail.size() - 1 ? tail[0] : tail.size() - 1;
        check.nonce.assign(tail.begin() + 1, tail.begin() + 1 + nonce_len);
        check.pcr_values.clear();
        for (size_t i = 1 + nonce_len; i < tail.size(); i += 32) {
          const size_t n = tail.size() - i < 32 ? tail.size() - i : 32;
          check.pcr_values.emplace_back(tail.begin() + i, tail.begin() + i + n);
        }
      }
      (void)vcrypt::VerifyQuote(attest, Sign(h.software_ak, attest), check);
      break;
    }
    case 2: {
      if (rest.size() < 2) break;
      const Bytes attest = Patch(kAttest, rest[0], rest.subspan(2),
                                 static_cast<int8_t>(rest[1]));
      (void)vcrypt::ParseQuote(attest);
      (void)vcrypt::VerifyQuote(attest, Sign(h.software_ak, attest),
                                FixtureCheck(h.software_ak.pub));
      break;
    }
    case 3: {
      if (rest.empty()) break;
      const Bytes pub = Patch(kAkPublic, rest[0], rest.subspan(1), 0);
      auto ak = vcrypt::ParseTpm2bPublic(pub);
      if (ak.ok()) {
        (void)vcrypt::PublicKeyDer(*ak);
        (void)vcrypt::PublicKeyPem(*ak);
        (void)vcrypt::VerifyQuote(kAttest, kSignature, FixtureCheck(*ak));
      }
      break;
    }
    case 4: {
      if (rest.size() < 3) break;
      const size_t offset = static_cast<size_t>(rest[0] << 8 | rest[1]);
      std::span<const uint8_t> tail = rest.subspan(2);
      const size_t name_len =
          tail[0] < tail.size() - 1 ? tail[0] : tail.size() - 1;
      std::span<const uint8_t> name = tail.subspan(1, name_len);
      if (name.empty()) name = kAkName;
      const Bytes pub = Patch(kEkPublic, offset, tail.subspan(1 + name_len), 0);
      auto ek = vcrypt::ParseTpm2bPublic(pub);
      if (ek.ok()) {
        (void)vcrypt::IsEndorsementKeyShape(*ek);
        (void)vcrypt::PublicKeyDer(*ek);
        static const uint8_t kSecret[16] = {1, 2,  3,  4,  5,  6,  7,  8,
                                            9, 10, 11, 12, 13, 14, 15, 16};
        (void)vcrypt::MakeCredential(*ek, name,
                                     vcrypt::SecureBuffer::CopyOf(kSecret));
      }
      break;
    }
  }
  return 0;
}
