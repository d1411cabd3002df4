// KMIP 1.x request and response messages over TTLV (keyproviders/standard/
// ttlv.h): what the "standard" key provider says to a KMS.
//
// Scope: protocol versions 1.0-1.4 (1.2 by default), and the operations
// vcrypt needs: DiscoverVersions, Query, Create (AES-256 symmetric key, KMIP
// 1.x Template-Attribute form), Activate, Get, GetAttributes, Locate (by
// Name), Revoke, Destroy. Encodings are the same in every 1.x version for
// these operations; only the header's Protocol Version differs.
//
// Shape of a round trip:
//
//   std::vector<kmip::RequestItem> items = {kmip::MakeGet(uid1),
//                                           kmip::MakeGet(uid2)};
//   kmip::RequestOptions options;
//   options.batch_error_continuation =
//       kmip::BatchErrorContinuationOption::kContinue;
//   auto req = kmip::EncodeRequest(items, options);  // Result<EncodedRequest>
//   ... transport sends req->message, reads the reply into a SecureBuffer
//   auto resp = kmip::DecodeResponse(reply.span());  // views into `reply`
//   auto matched = kmip::MatchResponse(*req, *resp); // one per request item
//   Result<SecureBuffer> k1 = kmip::ParseGetAes256((*matched)[0], uid1);
//   Result<SecureBuffer> k2 = kmip::ParseGetAes256((*matched)[1], uid2);
//
// Requests:
//  - The header carries Protocol Version and Batch Count, plus Batch Error
//    Continuation Option / Maximum Response Size when asked for. No Time
//    Stamp by default: PyKMIP rejects a request whose stamp is skewed by a
//    minute, and the stamp buys nothing over TLS.
//  - Every batch item carries a Unique Batch Item ID (4-byte big-endian
//    index, 1-based) and responses are matched by it. IDs are unique within
//    a message only: a transport must not reuse a connection after a
//    request timed out (a late reply would match the next request).
//  - Request payloads never carry key material (no Register), so requests
//    are plain std::vector<uint8_t>.
//
// Responses:
//  - DecodeResponse checks the TTLV strictly (ttlv::Decode) with KMIP's
//    fixed types per tag (KmipFixedType), then the message shape: Response
//    Header (Protocol Version, optional Time Stamp, Batch Count == number of
//    batch items) and batch items (Result Status required; Operation
//    required on success and tolerated missing on failure, which is how
//    PyKMIP reports message-level errors).
//  - ResponseItem and everything the parsers return as views (string_view,
//    spans, ttlv::Item pointers) point into the response buffer and into the
//    Response; keep both alive while using them. Key bytes are copied only
//    into a SecureBuffer (ParseGet*).
//
// Errors (all Error values, never exceptions):
//  - A malformed or mismatched response (bad TTLV, wrong shape, an answer to
//    a question we did not ask): ErrorCode::kInvalidArgument, message
//    starting "TTLV: " or "KMIP response: ".
//  - A KMIP result error (the server answered, with Result Status other
//    than Success) is data, not a decode error: DecodeResponse and
//    MatchResponse succeed and the ResponseItem says status/reason/message.
//    The Parse* helpers turn it into ErrorCode::kKeyUnavailable with a
//    message naming the operation, the Result Reason and the server's
//    Result Message (sanitised: printable ASCII, at most 256 chars), e.g.
//      "KMS refused Get: Item Not Found (reason 0x1): Could not locate ..."
//    Callers that must tell the two apart (the provider never fails over to
//    another KMS on a KMIP result error) check ResponseItem::ok() or use
//    ResultErrorOf() before parsing. Nothing in this file is a transport
//    error: a failure here means the server did answer.
//  - Error messages never contain key bytes.
#ifndef VCRYPT_KEYPROVIDERS_STANDARD_KMIP_H_
#define VCRYPT_KEYPROVIDERS_STANDARD_KMIP_H_

#include <compare>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/secure_buffer.h"
#include "keyproviders/standard/ttlv.h"

namespace vcrypt::kmip {

// --- Tags (KMIP 1.4 spec, 9.1.3.1) used here --------------------------------
namespace tag {
inline constexpr ttlv::Tag kActivationDate = 0x420001;
inline constexpr ttlv::Tag kAsynchronousCorrelationValue = 0x420006;
inline constexpr ttlv::Tag kAsynchronousIndicator = 0x420007;
inline constexpr ttlv::Tag kAttribute = 0x420008;
inline constexpr ttlv::Tag kAttributeIndex = 0x420009;
inline constexpr ttlv::Tag kAttributeName = 0x42000A;
inline constexpr ttlv::Tag kAttributeValue = 0x42000B;
inline constexpr ttlv::Tag kAuthentication = 0x42000C;
inline constexpr ttlv::Tag kBatchCount = 0x42000D;
inline constexpr ttlv::Tag kBatchErrorContinuationOption = 0x42000E;
inline constexpr ttlv::Tag kBatchItem = 0x42000F;
inline constexpr ttlv::Tag kBatchOrderOption = 0x420010;
inline constexpr ttlv::Tag kCompromiseDate = 0x420020;
inline constexpr ttlv::Tag kCompromiseOccurrenceDate = 0x420021;
inline constexpr ttlv::Tag kCryptographicAlgorithm = 0x420028;
inline constexpr ttlv::Tag kCryptographicLength = 0x42002A;
inline constexpr ttlv::Tag kCryptographicParameters = 0x42002B;
inline constexpr ttlv::Tag kCryptographicUsageMask = 0x42002C;
inline constexpr ttlv::Tag kDeactivationDate = 0x42002F;
inline constexpr ttlv::Tag kDestroyDate = 0x420033;
inline constexpr ttlv::Tag kInitialDate = 0x420039;
inline constexpr ttlv::Tag kKeyBlock = 0x420040;
inline constexpr ttlv::Tag kKeyCompressionType = 0x420041;
inline constexpr ttlv::Tag kKeyFormatType = 0x420042;
inline constexpr ttlv::Tag kKeyMaterial = 0x420043;
inline constexpr ttlv::Tag kKeyValue = 0x420045;
inline constexpr ttlv::Tag kKeyWrappingData = 0x420046;
inline constexpr ttlv::Tag kLastChangeDate = 0x420048;
inline constexpr ttlv::Tag kMaximumItems = 0x42004F;
inline constexpr ttlv::Tag kMaximumResponseSize = 0x420050;
inline constexpr ttlv::Tag kMessageExtension = 0x420051;
inline constexpr ttlv::Tag kName = 0x420053;
inline constexpr ttlv::Tag kNameType = 0x420054;
inline constexpr ttlv::Tag kNameValue = 0x420055;
inline constexpr ttlv::Tag kObjectType = 0x420057;
inline constexpr ttlv::Tag kOperation = 0x42005C;
inline constexpr ttlv::Tag kProtocolVersion = 0x420069;
inline constexpr ttlv::Tag kProtocolVersionMajor = 0x42006A;
inline constexpr ttlv::Tag kProtocolVersionMinor = 0x42006B;
inline constexpr ttlv::Tag kQueryFunction = 0x420074;
inline constexpr ttlv::Tag kRequestHeader = 0x420077;
inline constexpr ttlv::Tag kRequestMessage = 0x420078;
inline constexpr ttlv::Tag kRequestPayload = 0x420079;
inline constexpr ttlv::Tag kResponseHeader = 0x42007A;
inline constexpr ttlv::Tag kResponseMessage = 0x42007B;
inline constexpr ttlv::Tag kResponsePayload = 0x42007C;
inline constexpr ttlv::Tag kResultMessage = 0x42007D;
inline constexpr ttlv::Tag kResultReason = 0x42007E;
inline constexpr ttlv::Tag kResultStatus = 0x42007F;
inline constexpr ttlv::Tag kRevocationMessage = 0x420080;
inline constexpr ttlv::Tag kRevocationReason = 0x420081;
inline constexpr ttlv::Tag kRevocationReasonCode = 0x420082;
inline constexpr ttlv::Tag kServerInformation = 0x420088;
inline constexpr ttlv::Tag kState = 0x42008D;
inline constexpr ttlv::Tag kStorageStatusMask = 0x42008E;
inline constexpr ttlv::Tag kSymmetricKey = 0x42008F;
inline constexpr ttlv::Tag kTemplateAttribute = 0x420091;
inline constexpr ttlv::Tag kTimeStamp = 0x420092;
inline constexpr ttlv::Tag kUniqueBatchItemId = 0x420093;
inline constexpr ttlv::Tag kUniqueIdentifier = 0x420094;
inline constexpr ttlv::Tag kVendorIdentification = 0x42009D;
inline constexpr ttlv::Tag kLocatedItems = 0x4200D5;
}  // namespace tag

// The TTLV type KMIP 1.x fixes for `t`, or nullopt (unknown tag, or a tag
// whose type varies: Attribute Value, Key Value, Key Material). Used as
// ttlv::DecodeOptions::fixed_type by DecodeResponse.
std::optional<ttlv::Type> KmipFixedType(ttlv::Tag t);

// --- Enumerations (values from the KMIP 1.4 spec, 9.1.3.2) ------------------
// Values outside the named ones are representable (a server may send
// extensions); the *Name functions print them in hex.

enum class Operation : uint32_t {
  kCreate = 0x01,
  kRegister = 0x03,
  kLocate = 0x08,
  kGet = 0x0A,
  kGetAttributes = 0x0B,
  kGetAttributeList = 0x0C,
  kActivate = 0x12,
  kRevoke = 0x13,
  kDestroy = 0x14,
  kQuery = 0x18,
  kDiscoverVersions = 0x1E,
};

enum class ResultStatus : uint32_t {
  kSuccess = 0,
  kOperationFailed = 1,
  kOperationPending = 2,
  kOperationUndone = 3,
};

enum class ResultReason : uint32_t {
  kItemNotFound = 0x01,
  kResponseTooLarge = 0x02,
  kAuthenticationNotSuccessful = 0x03,
  kInvalidMessage = 0x04,
  kOperationNotSupported = 0x05,
  kMissingData = 0x06,
  kInvalidField = 0x07,
  kFeatureNotSupported = 0x08,
  kOperationCanceledByRequester = 0x09,
  kCryptographicFailure = 0x0A,
  kIllegalOperation = 0x0B,
  kPermissionDenied = 0x0C,
  kObjectArchived = 0x0D,
  kIndexOutOfBounds = 0x0E,
  kApplicationNamespaceNotSupported = 0x0F,
  kKeyFormatTypeNotSupported = 0x10,
  kKeyCompressionTypeNotSupported = 0x11,
  kEncodingOptionError = 0x12,
  kKeyValueNotPresent = 0x13,
  kAttestationRequired = 0x14,
  kAttestationFailed = 0x15,
  kSensitive = 0x16,
  kNotExtractable = 0x17,
  kObjectAlreadyExists = 0x18,
  kGeneralFailure = 0x100,
};

enum class ObjectType : uint32_t {
  kCertificate = 1,
  kSymmetricKey = 2,
  kPublicKey = 3,
  kPrivateKey = 4,
  kSplitKey = 5,
  kTemplate = 6,
  kSecretData = 7,
  kOpaqueObject = 8,
  kPgpKey = 9,
};

enum class CryptographicAlgorithm : uint32_t {
  kDes = 1,
  kTripleDes = 2,
  kAes = 3,
};

// Cryptographic Usage Mask bits.
inline constexpr int32_t kUsageEncrypt = 0x04;
inline constexpr int32_t kUsageDecrypt = 0x08;
inline constexpr int32_t kUsageWrapKey = 0x10;
inline constexpr int32_t kUsageUnwrapKey = 0x20;
// What a KEK is for: it wraps DEKs (AES-GCM, i.e. encrypt/decrypt of key
// material). Accepted by PyKMIP 0.10 (captured in tests/kmip/golden/).
inline constexpr int32_t kKekUsageMask =
    kUsageWrapKey | kUsageUnwrapKey | kUsageEncrypt | kUsageDecrypt;

enum class KeyFormatType : uint32_t {
  kRaw = 1,
  kOpaque = 2,
  kTransparentSymmetricKey = 7,
};

enum class NameType : uint32_t {
  kUninterpretedTextString = 1,
  kUri = 2,
};

enum class State : uint32_t {
  kPreActive = 1,
  kActive = 2,
  kDeactivated = 3,
  kCompromised = 4,
  kDestroyed = 5,
  kDestroyedCompromised = 6,
};

enum class RevocationReasonCode : uint32_t {
  kUnspecified = 1,
  kKeyCompromise = 2,
  kCaCompromise = 3,
  kAffiliationChanged = 4,
  kSuperseded = 5,
  kCessationOfOperation = 6,
  kPrivilegeWithdrawn = 7,
};

enum class QueryFunction : uint32_t {
  kQueryOperations = 1,
  kQueryObjects = 2,
  kQueryServerInformation = 3,
};

enum class BatchErrorContinuationOption : uint32_t {
  kContinue = 1,
  kStop = 2,
  kUndo = 3,
};

std::string OperationName(Operation op);       // "Get", "operation 0x2A"
std::string ResultStatusName(ResultStatus s);  // "Operation Failed"
std::string ResultReasonName(ResultReason r);  // "Item Not Found"
std::string ObjectTypeName(ObjectType t);      // "Symmetric Key"
std::string StateName(State s);                // "Active"

// --- Protocol versions ------------------------------------------------------

struct ProtocolVersion {
  int32_t major = 1;
  int32_t minor = 2;
  friend auto operator<=>(const ProtocolVersion&,
                          const ProtocolVersion&) = default;
};
std::string VersionString(ProtocolVersion v);  // "1.2"

inline constexpr ProtocolVersion kDefaultVersion{1, 2};
// What vcrypt speaks, in preference order (sent in DiscoverVersions).
inline constexpr ProtocolVersion kSupportedVersions[] = {
    {1, 2}, {1, 4}, {1, 3}, {1, 1}, {1, 0}};
bool IsSupported(ProtocolVersion v);
// The version to use with a server that announced `server_versions`
// (DiscoverVersions): 1.2 if it has it, else the highest one vcrypt also
// speaks. kInvalidArgument (naming the server's versions) if none.
Result<ProtocolVersion> SelectVersion(
    std::span<const ProtocolVersion> server_versions);

// --- Requests ---------------------------------------------------------------

// One batch item to send: the operation and its encoded Request Payload
// structure (tag 0x420079). Built by the Make* helpers below.
struct RequestItem {
  Operation operation = Operation::kGet;
  std::vector<uint8_t> payload;
};

struct RequestOptions {
  ProtocolVersion version = kDefaultVersion;
  // What the server does with the remaining items after one fails. Unset
  // means the server default, Stop (PyKMIP: later items get no response,
  // see MatchResponse). Batches of independent Gets want kContinue.
  std::optional<BatchErrorContinuationOption> batch_error_continuation;
  std::optional<int32_t> maximum_response_size;
  // Only for reproducing test vectors; see the file comment.
  std::optional<int64_t> time_stamp;
  // Unique Batch Item IDs on every item. Only the single-item KMIP spec
  // test vectors need false (MatchResponse then requires a single item).
  bool batch_item_ids = true;
};

struct EncodedRequest {
  std::vector<uint8_t> message;
  ProtocolVersion version;
  std::vector<Operation> operations;  // per item, in order
  // Per item, in order; empty vectors when batch_item_ids was false.
  std::vector<std::vector<uint8_t>> batch_item_ids;
};

// A Request Message with `items` in order. kInvalidArgument for no items, a
// malformed payload, an unsupported version or a message over
// ttlv::kMaxMessageSize.
Result<EncodedRequest> EncodeRequest(std::span<const RequestItem> items,
                                     const RequestOptions& options = {});

// DiscoverVersions listing `versions` (the client's, preference order).
RequestItem MakeDiscoverVersions(
    std::span<const ProtocolVersion> versions = kSupportedVersions);
// Query with the given Query Functions.
RequestItem MakeQuery(std::span<const QueryFunction> functions);
// Create of a vcrypt KEK: Symmetric Key, AES, 256 bits, usage mask
// kKekUsageMask, and Name `name` (Uninterpreted Text String) when `name`
// is not empty. KMIP 1.x Template-Attribute form.
RequestItem MakeCreateAes256(std::string_view name);
// General form of the above (used for the spec test vectors).
RequestItem MakeCreateSymmetricKey(CryptographicAlgorithm algorithm,
                                   int32_t length_bits, int32_t usage_mask,
                                   std::string_view name);
// Activate `uid`; an empty uid is left out, so the server uses the ID
// placeholder, i.e. the object created earlier in the same batch. PyKMIP
// 0.10 cannot parse that (it answers "Invalid Message" for the whole
// message; tests/kmip/golden/README.md): against it, Create and Activate
// take two round trips.
RequestItem MakeActivate(std::string_view uid);
// Get `uid` (empty: the ID placeholder). Asks for `format` (Raw by default:
// the only format vcrypt parses; PyKMIP only has Raw); nullopt leaves the
// Key Format Type out.
RequestItem MakeGet(std::string_view uid,
                    std::optional<KeyFormatType> format = KeyFormatType::kRaw);
// GetAttributes of `uid` (empty: placeholder). No names: all attributes.
RequestItem MakeGetAttributes(std::string_view uid,
                              std::span<const std::string_view> names = {});
// Locate symmetric keys whose Name is `name`.
RequestItem MakeLocateByName(std::string_view name);
// Revoke `uid` for `reason`. KMIP requires a Compromise Occurrence Date
// with KeyCompromise: `compromise_occurrence_date` (POSIX seconds) is sent
// for that reason only, and is the current time when unset. Note PyKMIP
// revokes a non-Active key only with KeyCompromise.
RequestItem MakeRevoke(
    std::string_view uid, RevocationReasonCode reason,
    std::optional<int64_t> compromise_occurrence_date = std::nullopt);
// Destroy `uid`. PyKMIP refuses to destroy an Active key: Revoke first.
RequestItem MakeDestroy(std::string_view uid);

// --- Responses --------------------------------------------------------------

// One Response Batch Item. Views into the response buffer / Response.
struct ResponseItem {
  std::optional<Operation> operation;      // absent in some error replies
  std::span<const uint8_t> batch_item_id;  // empty when absent
  ResultStatus status = ResultStatus::kOperationFailed;
  std::optional<ResultReason> reason;
  std::string_view message;             // Result Message, may be empty
  const ttlv::Item* payload = nullptr;  // Response Payload, if any
  size_t offset = 0;                    // of the batch item, for errors

  bool ok() const { return status == ResultStatus::kSuccess; }
};

// A decoded Response Message. Move-only: items point into `root`.
struct Response {
  Response() = default;
  Response(Response&&) = default;
  Response& operator=(Response&&) = default;
  Response(const Response&) = delete;
  Response& operator=(const Response&) = delete;

  ProtocolVersion version;
  std::optional<int64_t> time_stamp;
  std::vector<ResponseItem> items;
  ttlv::Item root;  // the whole decoded message
};

// Decodes a Response Message held in `message` (which must outlive the
// result). See the file comment for what is checked.
Result<Response> DecodeResponse(std::span<const uint8_t> message);
// The result would point into a destroyed temporary: keep the buffer alive.
Result<Response> DecodeResponse(const std::vector<uint8_t>&& message) = delete;

// For each item of `request`, in request order, the response item that
// answers it, or nullptr when the server returned none for it (after a
// failed item the server stops, unless kContinue was requested). Matching
// is by Unique Batch Item ID; a response item with an unknown or duplicate
// ID, or whose Operation differs from the request's, or a response whose
// protocol version is not the request's major version with a minor version
// at most the request's, is an error (kInvalidArgument). A message-level
// error (a single failed item with neither ID nor Operation) answers every
// request item.
Result<std::vector<const ResponseItem*>> MatchResponse(
    const EncodedRequest& request, const Response& response);

// A KMIP result error as the server reported it.
struct KmipResultError {
  std::optional<Operation> operation;
  ResultStatus status = ResultStatus::kOperationFailed;
  std::optional<ResultReason> reason;
  std::string message;  // sanitised server text

  // "KMS refused Get: Item Not Found (reason 0x1): <message>".
  std::string Describe() const;
  // ErrorCode::kKeyUnavailable with Describe().
  Error ToError() const;
};
// The item's result error, or nullopt when it succeeded. `requested` names
// the operation when the server left it out.
std::optional<KmipResultError> ResultErrorOf(const ResponseItem& item,
                                             Operation requested);

// The typed parsers below take what MatchResponse returned for one request
// item. Each fails with kKeyUnavailable when the item is nullptr (not
// processed) or a KMIP result error (see the file comment), and with
// kInvalidArgument when the payload is malformed or not for that operation.

// Create: the new object's Unique Identifier (the object must be a
// Symmetric Key).
Result<std::string> ParseCreate(const ResponseItem* item);
// Activate / Revoke / Destroy: the server must echo `expected_uid`.
Status ParseActivate(const ResponseItem* item, std::string_view expected_uid);
Status ParseRevoke(const ResponseItem* item, std::string_view expected_uid);
Status ParseDestroy(const ResponseItem* item, std::string_view expected_uid);

// Get of a symmetric key in Raw format (not wrapped, not compressed).
struct SymmetricKey {
  std::string unique_identifier;
  CryptographicAlgorithm algorithm = CryptographicAlgorithm::kAes;
  int32_t length_bits = 0;
  SecureBuffer key;  // the Key Material bytes
};
Result<SymmetricKey> ParseGetSymmetricKey(const ResponseItem* item);
// Get of a vcrypt KEK: a Symmetric Key whose Unique Identifier is
// `expected_uid`, AES, 256 bits, 32 bytes of Raw key material. The key is
// copied straight from the response buffer into the SecureBuffer.
Result<SecureBuffer> ParseGetAes256(const ResponseItem* item,
                                    std::string_view expected_uid);

// Locate: the Unique Identifiers found (possibly none).
Result<std::vector<std::string>> ParseLocate(const ResponseItem* item);

// DiscoverVersions: the server's versions, in its order.
Result<std::vector<ProtocolVersion>> ParseDiscoverVersions(
    const ResponseItem* item);

struct QueryResult {
  std::vector<Operation> operations;
  std::vector<ObjectType> object_types;
  std::string vendor_identification;  // sanitised like result messages
};
Result<QueryResult> ParseQuery(const ResponseItem* item);

// GetAttributes (KMIP 1.x: a list of Attribute structures).
struct AttributeView {
  std::string_view name;
  int32_t index = 0;                  // Attribute Index, 0 when absent
  const ttlv::Item* value = nullptr;  // the Attribute Value item
};
struct GetAttributesResult {
  std::string unique_identifier;
  std::vector<AttributeView> attributes;
};
Result<GetAttributesResult> ParseGetAttributes(const ResponseItem* item);

// The attributes vcrypt looks at, typed. A present attribute with the
// wrong value type is kInvalidArgument.
struct KeyAttributes {
  std::optional<ObjectType> object_type;
  std::optional<State> state;
  std::optional<CryptographicAlgorithm> algorithm;
  std::optional<int32_t> length_bits;
  std::optional<int32_t> usage_mask;
  std::vector<std::string> names;
};
Result<KeyAttributes> SummarizeAttributes(
    std::span<const AttributeView> attributes);

}  // namespace vcrypt::kmip

#endif  // VCRYPT_KEYPROVIDERS_STANDARD_KMIP_H_
