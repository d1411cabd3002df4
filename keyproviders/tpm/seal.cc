#include "keyproviders/tpm/seal.h"

#include <openssl/crypto.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>

#include <algorithm>
#include <cstring>
#include <initializer_list>

#include "common/handles.h"
#include "keyproviders/tpm/tpm_context.h"

namespace vcrypt {
namespace {

// The parent's `unique`: another tool's P-256 storage primary with the
// same attributes must not be the same key.
constexpr char kParentUnique[] = "vcrypt native seal parent v1";
constexpr TPMA_OBJECT kSealedAttributes =
    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_NODA;

// A transient object or session, flushed when it goes out of scope (slots
// are few). Declared after the TpmContext, so flushed before it closes.
class Transient {
 public:
  explicit Transient(ESYS_CONTEXT* esys) : esys_(esys) {}
  Transient(const Transient&) = delete;
  Transient& operator=(const Transient&) = delete;
  ~Transient() {
    // A session the TPM ended already makes this fail: nothing to do.
    if (handle_ != ESYS_TR_NONE) Esys_FlushContext(esys_, handle_);
  }
  ESYS_TR* out() { return &handle_; }
  ESYS_TR get() const { return handle_; }

 private:
  ESYS_CONTEXT* esys_;
  ESYS_TR handle_ = ESYS_TR_NONE;
};

TPM2B_PUBLIC ParentTemplate() {
  TPM2B_PUBLIC t = {};
  TPMT_PUBLIC& p = t.publicArea;
  p.type = TPM2_ALG_ECC;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                       TPMA_OBJECT_SENSITIVEDATAORIGIN |
                       TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA |
                       TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
  p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
  p.parameters.eccDetail.symmetric.keyBits.aes = 128;
  p.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  p.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
  p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  p.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  p.unique.ecc.x.size = 32;
  std::memcpy(p.unique.ecc.x.buffer, kParentUnique, sizeof(kParentUnique) - 1);
  p.unique.ecc.y.size = 32;
  return t;
}

// `policy`: empty, or the PolicyPCR digest the object is bound to.
TPM2B_PUBLIC SealedTemplate(const TPM2B_DIGEST& policy) {
  TPM2B_PUBLIC t = {};
  TPMT_PUBLIC& p = t.publicArea;
  p.type = TPM2_ALG_KEYEDHASH;
  p.nameAlg = TPM2_ALG_SHA256;
  // Without a policy the (empty) password unseals; with one, only the
  // policy does: userWithAuth off, or the password would bypass it.
  p.objectAttributes =
      kSealedAttributes | (policy.size == 0 ? TPMA_OBJECT_USERWITHAUTH : 0);
  p.authPolicy = policy;
  p.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
  return t;
}

TPML_PCR_SELECTION PcrSelection(const std::vector<int>& pcrs) {
  TPML_PCR_SELECTION sel = {};
  sel.count = 1;
  sel.pcrSelections[0].hash = TPM2_ALG_SHA256;
  sel.pcrSelections[0].sizeofSelect = 3;
  for (int i : pcrs)
    sel.pcrSelections[0].pcrSelect[i / 8] |=
        static_cast<uint8_t>(1u << (i % 8));
  return sel;
}

// Whether the TPM itself refused `rc`'s command over its input: a
// format-one code (TPM layer) that is one of `codes`, whichever handle,
// session or parameter it names.
bool TpmRefused(TSS2_RC rc, std::initializer_list<TPM2_RC> codes) {
  if ((rc & 0xFFFF0000u) != 0 || (rc & TPM2_RC_FMT1) == 0) return false;
  const TPM2_RC code = rc & (TPM2_RC_FMT1 | 0x3F);
  for (TPM2_RC c : codes)
    if (code == c) return true;
  return false;
}

Status CreateParent(ESYS_CONTEXT* esys, ESYS_TR* handle) {
  const TPM2B_PUBLIC tmpl = ParentTemplate();
  TPM2B_SENSITIVE_CREATE sensitive = {};
  TPM2B_DATA outside = {};
  TPML_PCR_SELECTION creation_pcr = {};
  TSS2_RC rc = Esys_CreatePrimary(esys, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD,
                                  ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &tmpl,
                                  &outside, &creation_pcr, handle, nullptr,
                                  nullptr, nullptr, nullptr);
  if (rc != TSS2_RC_SUCCESS)
    return TpmRcError("creating the storage primary key", rc);
  return Status::Ok();
}

// An HMAC session salted with `parent` (ECDH), whose session key encrypts
// the parameters `attributes` says (TPMA_SESSION_DECRYPT: the command's
// first parameter, ENCRYPT: the response's).
Status StartSaltedSession(ESYS_CONTEXT* esys, ESYS_TR parent,
                          TPMA_SESSION attributes, ESYS_TR* session) {
  TPMT_SYM_DEF sym = {};
  sym.algorithm = TPM2_ALG_AES;
  sym.keyBits.aes = 128;
  sym.mode.aes = TPM2_ALG_CFB;
  TSS2_RC rc = Esys_StartAuthSession(
      esys, parent, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
      nullptr, TPM2_SE_HMAC, &sym, TPM2_ALG_SHA256, session);
  if (rc != TSS2_RC_SUCCESS)
    return TpmRcError("starting an encrypted session", rc);
  rc = Esys_TRSess_SetAttributes(
      esys, *session, TPMA_SESSION_CONTINUESESSION | attributes, 0xff);
  if (rc != TSS2_RC_SUCCESS)
    return TpmRcError("setting the session's attributes", rc);
  return Status::Ok();
}

// A policy (or, with TPM2_SE_TRIAL, trial) session with PolicyPCR over the
// current SHA-256 values of `pcrs` applied.
Status StartPcrPolicySession(ESYS_CONTEXT* esys, TPM2_SE type,
                             const std::vector<int>& pcrs, ESYS_TR* session) {
  TPMT_SYM_DEF sym = {};
  sym.algorithm = TPM2_ALG_NULL;
  TSS2_RC rc = Esys_StartAuthSession(
      esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
      ESYS_TR_NONE, nullptr, type, &sym, TPM2_ALG_SHA256, session);
  if (rc != TSS2_RC_SUCCESS) return TpmRcError("starting a policy session", rc);
  // An empty pcrDigest: the TPM takes the PCRs' current values.
  const TPM2B_DIGEST current = {};
  const TPML_PCR_SELECTION sel = PcrSelection(pcrs);
  rc = Esys_PolicyPCR(esys, *session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                      &current, &sel);
  if (rc != TSS2_RC_SUCCESS)
    return TpmRcError("applying the PCR policy (is the SHA-256 bank on?)", rc);
  return Status::Ok();
}

Result<TPM2B_DIGEST> PcrPolicyDigest(ESYS_CONTEXT* esys,
                                     const std::vector<int>& pcrs) {
  Transient trial(esys);
  VCRYPT_RETURN_IF_ERROR(
      StartPcrPolicySession(esys, TPM2_SE_TRIAL, pcrs, trial.out()));
  TPM2B_DIGEST* raw = nullptr;
  TSS2_RC rc = Esys_PolicyGetDigest(esys, trial.get(), ESYS_TR_NONE,
                                    ESYS_TR_NONE, ESYS_TR_NONE, &raw);
  EsysPtr<TPM2B_DIGEST> digest(raw);
  if (rc != TSS2_RC_SUCCESS)
    return TpmRcError("computing the PCR policy digest", rc);
  return *digest;
}

struct SealedObject {
  TPM2B_PUBLIC pub = {};
  TPM2B_PRIVATE priv = {};
};

// The blob, checked to be what SealSecret makes for `pcrs` (with or
// without a policy) before any of it reaches the TPM.
Result<SealedObject> ParseBlob(std::span<const uint8_t> blob,
                               const std::vector<int>& pcrs) {
  auto bad = [](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "not a vcrypt sealed object: " + why);
  };
  if (blob.size() > kMaxSealedBlobSize) return bad("too large");
  SealedObject o;
  size_t off = 0;
  if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(blob.data(), blob.size(), &off, &o.pub) !=
          TSS2_RC_SUCCESS ||
      Tss2_MU_TPM2B_PRIVATE_Unmarshal(blob.data(), blob.size(), &off,
                                      &o.priv) != TSS2_RC_SUCCESS)
    return bad("truncated or malformed");
  if (off != blob.size()) return bad("trailing bytes");
  const TPMT_PUBLIC& p = o.pub.publicArea;
  if (p.type != TPM2_ALG_KEYEDHASH || p.nameAlg != TPM2_ALG_SHA256 ||
      p.parameters.keyedHashDetail.scheme.scheme != TPM2_ALG_NULL)
    return bad("not a SHA-256 sealed data object");
  const bool has_policy = (p.objectAttributes & TPMA_OBJECT_USERWITHAUTH) == 0;
  if (p.objectAttributes !=
          (kSealedAttributes | (has_policy ? 0 : TPMA_OBJECT_USERWITHAUTH)) ||
      p.authPolicy.size != (has_policy ? 32 : 0))
    return bad("unexpected object attributes or policy");
  if (has_policy && pcrs.empty())
    return MakeError(ErrorCode::kInvalidArgument,
                     "the sealed object has a PCR policy, but no PCRs are "
                     "configured for it");
  if (!has_policy && !pcrs.empty())
    return MakeError(ErrorCode::kInvalidArgument,
                     "the sealed object has no PCR policy, but PCRs are "
                     "configured for it");
  return o;
}

}  // namespace

Status CheckPcrList(const std::vector<int>& pcrs) {
  if (pcrs.empty() || pcrs.size() > 24)
    return MakeError(ErrorCode::kInvalidArgument,
                     "a PCR list names 1 to 24 PCRs");
  for (size_t i = 0; i < pcrs.size(); ++i) {
    if (pcrs[i] < 0 || pcrs[i] > 23)
      return MakeError(ErrorCode::kInvalidArgument,
                       "PCR " + std::to_string(pcrs[i]) +
                           " does not exist (PCRs are 0 to 23)");
    if (i > 0 && pcrs[i] <= pcrs[i - 1])
      return MakeError(ErrorCode::kInvalidArgument,
                       "a PCR list must be ascending without repeats");
  }
  return Status::Ok();
}

Result<std::vector<uint8_t>> SealSecret(const std::string& tcti,
                                        const SecureBuffer& secret,
                                        const std::vector<int>& pcrs) {
  if (secret.empty() || secret.size() > kMaxSealedSecretSize)
    return MakeError(ErrorCode::kInvalidArgument,
                     "a sealed secret is 1 to " +
                         std::to_string(kMaxSealedSecretSize) + " bytes");
  if (!pcrs.empty()) VCRYPT_RETURN_IF_ERROR(CheckPcrList(pcrs));
  VCRYPT_ASSIGN_OR_RETURN(TpmContext ctx, OpenTpmContext(tcti));
  ESYS_CONTEXT* esys = ctx.esys.get();
  Transient parent(esys);
  VCRYPT_RETURN_IF_ERROR(CreateParent(esys, parent.out()));
  TPM2B_DIGEST policy = {};
  if (!pcrs.empty()) {
    VCRYPT_ASSIGN_OR_RETURN(policy, PcrPolicyDigest(esys, pcrs));
  }
  Transient session(esys);
  VCRYPT_RETURN_IF_ERROR(StartSaltedSession(
      esys, parent.get(), TPMA_SESSION_DECRYPT | TPMA_SESSION_ENCRYPT,
      session.out()));
  const TPM2B_PUBLIC tmpl = SealedTemplate(policy);
  TPM2B_SENSITIVE_CREATE sensitive = {};
  sensitive.sensitive.data.size = static_cast<uint16_t>(secret.size());
  std::memcpy(sensitive.sensitive.data.buffer, secret.data(), secret.size());
  TPM2B_DATA outside = {};
  TPML_PCR_SELECTION creation_pcr = {};
  TPM2B_PRIVATE* raw_priv = nullptr;
  TPM2B_PUBLIC* raw_pub = nullptr;
  TSS2_RC rc =
      Esys_Create(esys, parent.get(), session.get(), ESYS_TR_NONE, ESYS_TR_NONE,
                  &sensitive, &tmpl, &outside, &creation_pcr, &raw_priv,
                  &raw_pub, nullptr, nullptr, nullptr);
  OPENSSL_cleanse(&sensitive, sizeof(sensitive));
  EsysPtr<TPM2B_PRIVATE> priv(raw_priv);
  EsysPtr<TPM2B_PUBLIC> pub(raw_pub);
  if (rc != TSS2_RC_SUCCESS) return TpmRcError("sealing", rc);

  std::vector<uint8_t> blob(sizeof(TPM2B_PUBLIC) + sizeof(TPM2B_PRIVATE));
  size_t off = 0;
  rc = Tss2_MU_TPM2B_PUBLIC_Marshal(pub.get(), blob.data(), blob.size(), &off);
  if (rc == TSS2_RC_SUCCESS)
    rc = Tss2_MU_TPM2B_PRIVATE_Marshal(priv.get(), blob.data(), blob.size(),
                                       &off);
  if (rc != TSS2_RC_SUCCESS)
    return TpmRcError("marshalling the sealed object", rc);
  blob.resize(off);
  return blob;
}

Result<SecureBuffer> UnsealSecret(const std::string& tcti,
                                  std::span<const uint8_t> blob,
                                  const std::vector<int>& pcrs) {
  if (!pcrs.empty()) VCRYPT_RETURN_IF_ERROR(CheckPcrList(pcrs));
  VCRYPT_ASSIGN_OR_RETURN(SealedObject obj, ParseBlob(blob, pcrs));
  VCRYPT_ASSIGN_OR_RETURN(TpmContext ctx, OpenTpmContext(tcti));
  ESYS_CONTEXT* esys = ctx.esys.get();
  Transient parent(esys);
  VCRYPT_RETURN_IF_ERROR(CreateParent(esys, parent.out()));
  Transient item(esys);
  TSS2_RC rc = Esys_Load(esys, parent.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                         ESYS_TR_NONE, &obj.priv, &obj.pub, item.out());
  if (rc != TSS2_RC_SUCCESS) {
    Error e = TpmRcError("loading the sealed object", rc);
    // The private area's integrity is keyed by the parent, which only
    // this TPM's owner seed makes; it also covers the public area.
    if (TpmRefused(rc, {TPM2_RC_INTEGRITY, TPM2_RC_BINDING, TPM2_RC_SIZE,
                        TPM2_RC_VALUE, TPM2_RC_KEY})) {
      e.code = ErrorCode::kKeyUnavailable;
      e.message = "the TPM refused to load the sealed object: " + e.message;
    }
    return e;
  }
  Transient session(esys);
  VCRYPT_RETURN_IF_ERROR(StartSaltedSession(
      esys, parent.get(), TPMA_SESSION_ENCRYPT, session.out()));
  Transient policy(esys);
  ESYS_TR auth = ESYS_TR_PASSWORD;
  if (!pcrs.empty()) {
    VCRYPT_RETURN_IF_ERROR(
        StartPcrPolicySession(esys, TPM2_SE_POLICY, pcrs, policy.out()));
    auth = policy.get();
  }
  TPM2B_SENSITIVE_DATA* raw_out = nullptr;
  rc = Esys_Unseal(esys, item.get(), auth, session.get(), ESYS_TR_NONE,
                   &raw_out);
  EsysPtr<TPM2B_SENSITIVE_DATA> out(raw_out);
  if (rc != TSS2_RC_SUCCESS) {
    Error e = TpmRcError("unsealing", rc);
    if (TpmRefused(rc, {TPM2_RC_POLICY_FAIL})) {
      e.code = ErrorCode::kKeyUnavailable;
      e.message = "the TPM refused to unseal it: " + e.message;
    }
    return e;
  }
  SecureBuffer secret = SecureBuffer::CopyOf(std::span<const uint8_t>(
      out->buffer, std::min<size_t>(out->size, sizeof(out->buffer))));
  OPENSSL_cleanse(out.get(), sizeof(*out));
  // Overwrite the plaintext tpm2-tss left in its response buffer (see
  // seal.h): a response of random bytes at least as long. Best effort.
  TPM2B_DIGEST* raw_random = nullptr;
  if (Esys_GetRandom(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                     sizeof(TPM2B_DIGEST::buffer),
                     &raw_random) == TSS2_RC_SUCCESS)
    Esys_Free(raw_random);
  return secret;
}

}  // namespace vcrypt
