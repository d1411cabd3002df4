// KMIP request/response messages over the TTLV codec. Over 800 lines: one
// encoder/decoder pair per operation, kept together because they share the
// batch and attribute helpers; splitting would spread those across files.
#include "keyproviders/standard/kmip.h"

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <utility>

namespace vcrypt::kmip {
namespace {

using ttlv::Item;
using ttlv::Tag;
using ttlv::Type;

// --- Tag table: names for messages, fixed types for the decoder -----------

struct TagInfo {
  Tag tag;
  std::optional<Type> type;  // nullopt: the type varies
  const char* name;
};

constexpr std::optional<Type> kVaries = std::nullopt;

// Sorted by tag (checked below). Types from the KMIP 1.4 spec, 9.1.3.
constexpr TagInfo kTags[] = {
    {tag::kActivationDate, Type::kDateTime, "Activation Date"},
    {tag::kAsynchronousCorrelationValue, Type::kByteString,
     "Asynchronous Correlation Value"},
    {tag::kAsynchronousIndicator, Type::kBoolean, "Asynchronous Indicator"},
    {tag::kAttribute, Type::kStructure, "Attribute"},
    {tag::kAttributeIndex, Type::kInteger, "Attribute Index"},
    {tag::kAttributeName, Type::kTextString, "Attribute Name"},
    {tag::kAttributeValue, kVaries, "Attribute Value"},
    {tag::kAuthentication, Type::kStructure, "Authentication"},
    {tag::kBatchCount, Type::kInteger, "Batch Count"},
    {tag::kBatchErrorContinuationOption, Type::kEnumeration,
     "Batch Error Continuation Option"},
    {tag::kBatchItem, Type::kStructure, "Batch Item"},
    {tag::kBatchOrderOption, Type::kBoolean, "Batch Order Option"},
    {tag::kCompromiseDate, Type::kDateTime, "Compromise Date"},
    {tag::kCompromiseOccurrenceDate, Type::kDateTime,
     "Compromise Occurrence Date"},
    {tag::kCryptographicAlgorithm, Type::kEnumeration,
     "Cryptographic Algorithm"},
    {tag::kCryptographicLength, Type::kInteger, "Cryptographic Length"},
    {tag::kCryptographicParameters, Type::kStructure,
     "Cryptographic Parameters"},
    {tag::kCryptographicUsageMask, Type::kInteger, "Cryptographic Usage Mask"},
    {tag::kDeactivationDate, Type::kDateTime, "Deactivation Date"},
    {tag::kDestroyDate, Type::kDateTime, "Destroy Date"},
    {tag::kInitialDate, Type::kDateTime, "Initial Date"},
    {tag::kKeyBlock, Type::kStructure, "Key Block"},
    {tag::kKeyCompressionType, Type::kEnumeration, "Key Compression Type"},
    {tag::kKeyFormatType, Type::kEnumeration, "Key Format Type"},
    {tag::kKeyMaterial, kVaries, "Key Material"},
    {tag::kKeyValue, kVaries, "Key Value"},
    {tag::kKeyWrappingData, Type::kStructure, "Key Wrapping Data"},
    {tag::kLastChangeDate, Type::kDateTime, "Last Change Date"},
    {tag::kMaximumItems, Type::kInteger, "Maximum Items"},
    {tag::kMaximumResponseSize, Type::kInteger, "Maximum Response Size"},
    {tag::kMessageExtension, Type::kStructure, "Message Extension"},
    {tag::kName, Type::kStructure, "Name"},
    {tag::kNameType, Type::kEnumeration, "Name Type"},
    {tag::kNameValue, Type::kTextString, "Name Value"},
    {tag::kObjectType, Type::kEnumeration, "Object Type"},
    {tag::kOperation, Type::kEnumeration, "Operation"},
    {tag::kProtocolVersion, Type::kStructure, "Protocol Version"},
    {tag::kProtocolVersionMajor, Type::kInteger, "Protocol Version Major"},
    {tag::kProtocolVersionMinor, Type::kInteger, "Protocol Version Minor"},
    {tag::kQueryFunction, Type::kEnumeration, "Query Function"},
    {tag::kRequestHeader, Type::kStructure, "Request Header"},
    {tag::kRequestMessage, Type::kStructure, "Request Message"},
    {tag::kRequestPayload, Type::kStructure, "Request Payload"},
    {tag::kResponseHeader, Type::kStructure, "Response Header"},
    {tag::kResponseMessage, Type::kStructure, "Response Message"},
    {tag::kResponsePayload, Type::kStructure, "Response Payload"},
    {tag::kResultMessage, Type::kTextString, "Result Message"},
    {tag::kResultReason, Type::kEnumeration, "Result Reason"},
    {tag::kResultStatus, Type::kEnumeration, "Result Status"},
    {tag::kRevocationMessage, Type::kTextString, "Revocation Message"},
    {tag::kRevocationReason, Type::kStructure, "Revocation Reason"},
    {tag::kRevocationReasonCode, Type::kEnumeration, "Revocation Reason Code"},
    {tag::kServerInformation, Type::kStructure, "Server Information"},
    {tag::kState, Type::kEnumeration, "State"},
    {tag::kStorageStatusMask, Type::kInteger, "Storage Status Mask"},
    {tag::kSymmetricKey, Type::kStructure, "Symmetric Key"},
    {tag::kTemplateAttribute, Type::kStructure, "Template-Attribute"},
    {tag::kTimeStamp, Type::kDateTime, "Time Stamp"},
    {tag::kUniqueBatchItemId, Type::kByteString, "Unique Batch Item ID"},
    {tag::kUniqueIdentifier, Type::kTextString, "Unique Identifier"},
    {tag::kVendorIdentification, Type::kTextString, "Vendor Identification"},
    {tag::kLocatedItems, Type::kInteger, "Located Items"},
};

constexpr bool TagsSorted() {
  for (size_t i = 1; i < std::size(kTags); ++i) {
    if (kTags[i - 1].tag >= kTags[i].tag) return false;
  }
  return true;
}
static_assert(TagsSorted(), "kTags must be sorted by tag, without duplicates");

const TagInfo* LookupTag(Tag t) {
  const auto* it =
      std::lower_bound(std::begin(kTags), std::end(kTags), t,
                       [](const TagInfo& info, Tag v) { return info.tag < v; });
  return (it != std::end(kTags) && it->tag == t) ? it : nullptr;
}

std::string TagName(Tag t) {
  const TagInfo* info = LookupTag(t);
  return info != nullptr ? info->name : "tag " + ttlv::TagHex(t);
}

std::string Hex(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%" PRIX32, v);
  return b;
}

// Server-supplied text in our messages: printable ASCII only (no terminal
// escapes or newlines in logs), bounded.
std::string Sanitize(std::string_view s, size_t max = 256) {
  std::string out;
  out.reserve(std::min(s.size(), max) + 3);
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == max) {
      out += "...";
      break;
    }
    const unsigned char c = static_cast<unsigned char>(s[i]);
    out.push_back(c >= 0x20 && c < 0x7F ? static_cast<char>(c) : '?');
  }
  return out;
}

Error Bad(std::string what) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "KMIP response: " + std::move(what));
}

std::string At(const Item& item) {
  return " at offset " + std::to_string(item.offset);
}

// The only child of `parent` with tag `t`, or nullptr; an error if there are
// several or it has the wrong type (for tags whose type varies).
Result<const Item*> FindOne(const Item& parent, Tag t, Type type) {
  const Item* found = nullptr;
  for (const Item& c : parent.children) {
    if (c.tag != t) continue;
    if (found != nullptr) {
      return Bad("more than one " + TagName(t) + " in " + TagName(parent.tag) +
                 At(c));
    }
    if (c.type != type) {
      return Bad(TagName(t) + " is a " + ttlv::TypeName(c.type) +
                 ", expected " + ttlv::TypeName(type) + At(c));
    }
    found = &c;
  }
  return found;
}

Result<const Item*> Require(const Item& parent, Tag t, Type type) {
  VCRYPT_ASSIGN_OR_RETURN(const Item* found, FindOne(parent, t, type));
  if (found == nullptr) {
    return Bad(TagName(parent.tag) + " has no " + TagName(t) + At(parent));
  }
  return found;
}

Result<ProtocolVersion> ParseVersion(const Item& v) {
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* major,
      Require(v, tag::kProtocolVersionMajor, Type::kInteger));
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* minor,
      Require(v, tag::kProtocolVersionMinor, Type::kInteger));
  return ProtocolVersion{major->integer(), minor->integer()};
}

void WriteVersion(ttlv::Writer& w, ProtocolVersion v) {
  w.Structure(tag::kProtocolVersion, [&] {
    w.Integer(tag::kProtocolVersionMajor, v.major);
    w.Integer(tag::kProtocolVersionMinor, v.minor);
  });
}

// Builds a RequestItem; a Writer error (only for absurd sizes) leaves the
// payload empty, which EncodeRequest rejects.
template <typename F>
RequestItem Build(Operation op, F&& body) {
  ttlv::Writer w;
  w.Structure(tag::kRequestPayload, [&] { body(w); });
  RequestItem item;
  item.operation = op;
  auto bytes = std::move(w).Finish();
  if (bytes.ok()) item.payload = std::move(bytes).value();
  return item;
}

void WriteNameValue(ttlv::Writer& w, Tag t, std::string_view name) {
  w.Structure(t, [&] {
    w.TextString(tag::kNameValue, name);
    w.Enumeration(tag::kNameType,
                  static_cast<uint32_t>(NameType::kUninterpretedTextString));
  });
}

template <typename F>
void WriteAttribute(ttlv::Writer& w, std::string_view name, F&& value) {
  w.Structure(tag::kAttribute, [&] {
    w.TextString(tag::kAttributeName, name);
    value();
  });
}

std::vector<uint8_t> BatchItemId(size_t index) {
  const uint32_t v = static_cast<uint32_t>(index + 1);
  return {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16),
          static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)};
}

Result<ResponseItem> ParseBatchItem(const Item& bi) {
  ResponseItem out;
  out.offset = bi.offset;
  VCRYPT_ASSIGN_OR_RETURN(const Item* op,
                          FindOne(bi, tag::kOperation, Type::kEnumeration));
  if (op != nullptr) out.operation = static_cast<Operation>(op->enumeration());
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* id, FindOne(bi, tag::kUniqueBatchItemId, Type::kByteString));
  if (id != nullptr) {
    if (id->bytes.empty()) {
      return Bad("empty Unique Batch Item ID" + At(*id));
    }
    out.batch_item_id = id->bytes;
  }
  VCRYPT_ASSIGN_OR_RETURN(const Item* status,
                          Require(bi, tag::kResultStatus, Type::kEnumeration));
  out.status = static_cast<ResultStatus>(status->enumeration());
  VCRYPT_ASSIGN_OR_RETURN(const Item* reason,
                          FindOne(bi, tag::kResultReason, Type::kEnumeration));
  if (reason != nullptr) {
    out.reason = static_cast<ResultReason>(reason->enumeration());
  }
  VCRYPT_ASSIGN_OR_RETURN(const Item* msg,
                          FindOne(bi, tag::kResultMessage, Type::kTextString));
  if (msg != nullptr) out.message = msg->text();
  VCRYPT_ASSIGN_OR_RETURN(const Item* payload,
                          FindOne(bi, tag::kResponsePayload, Type::kStructure));
  out.payload = payload;
  if (out.ok() && !out.operation.has_value()) {
    return Bad("successful batch item has no Operation" + At(bi));
  }
  return out;
}

// Common prologue of the typed parsers: the item must exist, have
// succeeded, be for `op` and carry a payload.
Result<const Item*> SuccessPayload(const ResponseItem* item, Operation op) {
  if (item == nullptr) {
    return MakeError(ErrorCode::kKeyUnavailable,
                     "KMS returned no result for " + OperationName(op) +
                         " (it stopped after an earlier batch item failed)");
  }
  if (auto err = ResultErrorOf(*item, op)) return err->ToError();
  if (item->operation.has_value() && *item->operation != op) {
    return Bad("expected a " + OperationName(op) + " result, got " +
               OperationName(*item->operation));
  }
  if (item->payload == nullptr) {
    return Bad(OperationName(op) +
               " result has no Response Payload (batch item at offset " +
               std::to_string(item->offset) + ")");
  }
  return item->payload;
}

Status ParseUidEcho(const ResponseItem* item, Operation op,
                    std::string_view expected_uid) {
  VCRYPT_ASSIGN_OR_RETURN(const Item* p, SuccessPayload(item, op));
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* uid, Require(*p, tag::kUniqueIdentifier, Type::kTextString));
  if (uid->text() != expected_uid) {
    return Bad(OperationName(op) + " answered for object '" +
               Sanitize(uid->text(), 64) + "', not '" +
               Sanitize(expected_uid, 64) + "'");
  }
  return Status::Ok();
}

}  // namespace

std::optional<Type> KmipFixedType(Tag t) {
  const TagInfo* info = LookupTag(t);
  return info != nullptr ? info->type : std::nullopt;
}

// --- Names ------------------------------------------------------------------

std::string OperationName(Operation op) {
  switch (op) {
    case Operation::kCreate:
      return "Create";
    case Operation::kRegister:
      return "Register";
    case Operation::kLocate:
      return "Locate";
    case Operation::kGet:
      return "Get";
    case Operation::kGetAttributes:
      return "GetAttributes";
    case Operation::kGetAttributeList:
      return "GetAttributeList";
    case Operation::kActivate:
      return "Activate";
    case Operation::kRevoke:
      return "Revoke";
    case Operation::kDestroy:
      return "Destroy";
    case Operation::kQuery:
      return "Query";
    case Operation::kDiscoverVersions:
      return "DiscoverVersions";
  }
  return "operation " + Hex(static_cast<uint32_t>(op));
}

std::string ResultStatusName(ResultStatus s) {
  switch (s) {
    case ResultStatus::kSuccess:
      return "Success";
    case ResultStatus::kOperationFailed:
      return "Operation Failed";
    case ResultStatus::kOperationPending:
      return "Operation Pending";
    case ResultStatus::kOperationUndone:
      return "Operation Undone";
  }
  return "status " + Hex(static_cast<uint32_t>(s));
}

std::string ResultReasonName(ResultReason r) {
  switch (r) {
    case ResultReason::kItemNotFound:
      return "Item Not Found";
    case ResultReason::kResponseTooLarge:
      return "Response Too Large";
    case ResultReason::kAuthenticationNotSuccessful:
      return "Authentication Not Successful";
    case ResultReason::kInvalidMessage:
      return "Invalid Message";
    case ResultReason::kOperationNotSupported:
      return "Operation Not Supported";
    case ResultReason::kMissingData:
      return "Missing Data";
    case ResultReason::kInvalidField:
      return "Invalid Field";
    case ResultReason::kFeatureNotSupported:
      return "Feature Not Supported";
    case ResultReason::kOperationCanceledByRequester:
      return "Operation Canceled By Requester";
    case ResultReason::kCryptographicFailure:
      return "Cryptographic Failure";
    case ResultReason::kIllegalOperation:
      return "Illegal Operation";
    case ResultReason::kPermissionDenied:
      return "Permission Denied";
    case ResultReason::kObjectArchived:
      return "Object Archived";
    case ResultReason::kIndexOutOfBounds:
      return "Index Out Of Bounds";
    case ResultReason::kApplicationNamespaceNotSupported:
      return "Application Namespace Not Supported";
    case ResultReason::kKeyFormatTypeNotSupported:
      return "Key Format Type Not Supported";
    case ResultReason::kKeyCompressionTypeNotSupported:
      return "Key Compression Type Not Supported";
    case ResultReason::kEncodingOptionError:
      return "Encoding Option Error";
    case ResultReason::kKeyValueNotPresent:
      return "Key Value Not Present";
    case ResultReason::kAttestationRequired:
      return "Attestation Required";
    case ResultReason::kAttestationFailed:
      return "Attestation Failed";
    case ResultReason::kSensitive:
      return "Sensitive";
    case ResultReason::kNotExtractable:
      return "Not Extractable";
    case ResultReason::kObjectAlreadyExists:
      return "Object Already Exists";
    case ResultReason::kGeneralFailure:
      return "General Failure";
  }
  return "reason " + Hex(static_cast<uint32_t>(r));
}

std::string ObjectTypeName(ObjectType t) {
  switch (t) {
    case ObjectType::kCertificate:
      return "Certificate";
    case ObjectType::kSymmetricKey:
      return "Symmetric Key";
    case ObjectType::kPublicKey:
      return "Public Key";
    case ObjectType::kPrivateKey:
      return "Private Key";
    case ObjectType::kSplitKey:
      return "Split Key";
    case ObjectType::kTemplate:
      return "Template";
    case ObjectType::kSecretData:
      return "Secret Data";
    case ObjectType::kOpaqueObject:
      return "Opaque Object";
    case ObjectType::kPgpKey:
      return "PGP Key";
  }
  return "object type " + Hex(static_cast<uint32_t>(t));
}

std::string StateName(State s) {
  switch (s) {
    case State::kPreActive:
      return "Pre-Active";
    case State::kActive:
      return "Active";
    case State::kDeactivated:
      return "Deactivated";
    case State::kCompromised:
      return "Compromised";
    case State::kDestroyed:
      return "Destroyed";
    case State::kDestroyedCompromised:
      return "Destroyed Compromised";
  }
  return "state " + Hex(static_cast<uint32_t>(s));
}

// --- Versions
// -----------------------------------------------------------------

std::string VersionString(ProtocolVersion v) {
  return std::to_string(v.major) + "." + std::to_string(v.minor);
}

bool IsSupported(ProtocolVersion v) {
  return std::find(std::begin(kSupportedVersions), std::end(kSupportedVersions),
                   v) != std::end(kSupportedVersions);
}

Result<ProtocolVersion> SelectVersion(
    std::span<const ProtocolVersion> server_versions) {
  auto has = [&](ProtocolVersion v) {
    return std::find(server_versions.begin(), server_versions.end(), v) !=
           server_versions.end();
  };
  if (has(kDefaultVersion)) return kDefaultVersion;
  std::optional<ProtocolVersion> best;
  for (ProtocolVersion v : server_versions) {
    if (IsSupported(v) && (!best.has_value() || v > *best)) best = v;
  }
  if (best.has_value()) return *best;
  std::string list;
  for (ProtocolVersion v : server_versions) {
    if (list.size() > 200) {
      list += ", ...";
      break;
    }
    list += (list.empty() ? "" : ", ") + VersionString(v);
  }
  return MakeError(ErrorCode::kInvalidArgument,
                   "the KMS speaks no KMIP version vcrypt supports (1.0-1.4); "
                   "it offers: " +
                       (list.empty() ? std::string("none") : list));
}

// --- Requests
// -----------------------------------------------------------------

Result<EncodedRequest> EncodeRequest(std::span<const RequestItem> items,
                                     const RequestOptions& options) {
  if (items.empty()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "KMIP request: no batch items");
  }
  if (!IsSupported(options.version)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "KMIP request: unsupported protocol version " +
                         VersionString(options.version));
  }
  if (!options.batch_item_ids && items.size() != 1) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "KMIP request: a batch of several items needs Unique "
                     "Batch Item IDs");
  }
  // Check each payload is exactly one Request Payload structure, so a bad
  // RequestItem cannot produce a malformed message.
  for (size_t i = 0; i < items.size(); ++i) {
    auto decoded = ttlv::Decode(items[i].payload);
    if (!decoded.ok() || decoded->tag != tag::kRequestPayload ||
        decoded->type != Type::kStructure) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "KMIP request: batch item " + std::to_string(i + 1) +
                           " (" + OperationName(items[i].operation) +
                           ") has no valid Request Payload");
    }
  }

  EncodedRequest out;
  out.version = options.version;
  ttlv::Writer w;
  w.Structure(tag::kRequestMessage, [&] {
    w.Structure(tag::kRequestHeader, [&] {
      WriteVersion(w, options.version);
      if (options.maximum_response_size.has_value()) {
        w.Integer(tag::kMaximumResponseSize, *options.maximum_response_size);
      }
      if (options.batch_error_continuation.has_value()) {
        w.Enumeration(tag::kBatchErrorContinuationOption,
                      static_cast<uint32_t>(*options.batch_error_continuation));
      }
      if (options.time_stamp.has_value()) {
        w.DateTime(tag::kTimeStamp, *options.time_stamp);
      }
      w.Integer(tag::kBatchCount, static_cast<int32_t>(items.size()));
    });
    for (size_t i = 0; i < items.size(); ++i) {
      w.Structure(tag::kBatchItem, [&] {
        w.Enumeration(tag::kOperation,
                      static_cast<uint32_t>(items[i].operation));
        std::vector<uint8_t> id;
        if (options.batch_item_ids) {
          id = BatchItemId(i);
          w.ByteString(tag::kUniqueBatchItemId, id);
        }
        w.AppendEncoded(items[i].payload);
        out.operations.push_back(items[i].operation);
        out.batch_item_ids.push_back(std::move(id));
      });
    }
  });
  VCRYPT_ASSIGN_OR_RETURN(out.message, std::move(w).Finish());
  if (out.message.size() > ttlv::kMaxMessageSize) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "KMIP request: message of " +
                         std::to_string(out.message.size()) +
                         " bytes exceeds the limit of " +
                         std::to_string(ttlv::kMaxMessageSize));
  }
  return out;
}

RequestItem MakeDiscoverVersions(std::span<const ProtocolVersion> versions) {
  return Build(Operation::kDiscoverVersions, [&](ttlv::Writer& w) {
    for (ProtocolVersion v : versions) WriteVersion(w, v);
  });
}

RequestItem MakeQuery(std::span<const QueryFunction> functions) {
  return Build(Operation::kQuery, [&](ttlv::Writer& w) {
    for (QueryFunction f : functions) {
      w.Enumeration(tag::kQueryFunction, static_cast<uint32_t>(f));
    }
  });
}

RequestItem MakeCreateSymmetricKey(CryptographicAlgorithm algorithm,
                                   int32_t length_bits, int32_t usage_mask,
                                   std::string_view name) {
  return Build(Operation::kCreate, [&](ttlv::Writer& w) {
    w.Enumeration(tag::kObjectType,
                  static_cast<uint32_t>(ObjectType::kSymmetricKey));
    w.Structure(tag::kTemplateAttribute, [&] {
      WriteAttribute(w, "Cryptographic Algorithm", [&] {
        w.Enumeration(tag::kAttributeValue, static_cast<uint32_t>(algorithm));
      });
      WriteAttribute(w, "Cryptographic Length",
                     [&] { w.Integer(tag::kAttributeValue, length_bits); });
      WriteAttribute(w, "Cryptographic Usage Mask",
                     [&] { w.Integer(tag::kAttributeValue, usage_mask); });
      if (!name.empty()) {
        WriteAttribute(w, "Name",
                       [&] { WriteNameValue(w, tag::kAttributeValue, name); });
      }
    });
  });
}

RequestItem MakeCreateAes256(std::string_view name) {
  return MakeCreateSymmetricKey(CryptographicAlgorithm::kAes, 256,
                                kKekUsageMask, name);
}

RequestItem MakeActivate(std::string_view uid) {
  return Build(Operation::kActivate, [&](ttlv::Writer& w) {
    if (!uid.empty()) w.TextString(tag::kUniqueIdentifier, uid);
  });
}

RequestItem MakeGet(std::string_view uid, std::optional<KeyFormatType> format) {
  return Build(Operation::kGet, [&](ttlv::Writer& w) {
    if (!uid.empty()) w.TextString(tag::kUniqueIdentifier, uid);
    if (format.has_value()) {
      w.Enumeration(tag::kKeyFormatType, static_cast<uint32_t>(*format));
    }
  });
}

RequestItem MakeGetAttributes(std::string_view uid,
                              std::span<const std::string_view> names) {
  return Build(Operation::kGetAttributes, [&](ttlv::Writer& w) {
    if (!uid.empty()) w.TextString(tag::kUniqueIdentifier, uid);
    for (std::string_view n : names) w.TextString(tag::kAttributeName, n);
  });
}

RequestItem MakeLocateByName(std::string_view name) {
  return Build(Operation::kLocate, [&](ttlv::Writer& w) {
    WriteAttribute(w, "Object Type", [&] {
      w.Enumeration(tag::kAttributeValue,
                    static_cast<uint32_t>(ObjectType::kSymmetricKey));
    });
    WriteAttribute(w, "Name",
                   [&] { WriteNameValue(w, tag::kAttributeValue, name); });
  });
}

RequestItem MakeRevoke(std::string_view uid, RevocationReasonCode reason,
                       std::optional<int64_t> compromise_occurrence_date) {
  return Build(Operation::kRevoke, [&](ttlv::Writer& w) {
    if (!uid.empty()) w.TextString(tag::kUniqueIdentifier, uid);
    w.Structure(tag::kRevocationReason, [&] {
      w.Enumeration(tag::kRevocationReasonCode, static_cast<uint32_t>(reason));
    });
    if (reason == RevocationReasonCode::kKeyCompromise) {
      w.DateTime(tag::kCompromiseOccurrenceDate,
                 compromise_occurrence_date.value_or(
                     static_cast<int64_t>(std::time(nullptr))));
    }
  });
}

RequestItem MakeDestroy(std::string_view uid) {
  return Build(Operation::kDestroy, [&](ttlv::Writer& w) {
    if (!uid.empty()) w.TextString(tag::kUniqueIdentifier, uid);
  });
}

// --- Responses
// ----------------------------------------------------------------

Result<Response> DecodeResponse(std::span<const uint8_t> message) {
  ttlv::DecodeOptions options;
  options.fixed_type = &KmipFixedType;
  Response r;
  VCRYPT_ASSIGN_OR_RETURN(r.root, ttlv::Decode(message, options));
  const Item& root = r.root;
  if (root.tag != tag::kResponseMessage) {
    return Bad("expected a Response Message, got " + TagName(root.tag) +
               At(root));
  }
  // Shape: exactly one header, first; then only batch items.
  if (root.children.empty() || root.children[0].tag != tag::kResponseHeader) {
    return Bad("Response Message does not start with a Response Header" +
               At(root));
  }
  const Item& header = root.children[0];
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* version,
      Require(header, tag::kProtocolVersion, Type::kStructure));
  VCRYPT_ASSIGN_OR_RETURN(r.version, ParseVersion(*version));
  VCRYPT_ASSIGN_OR_RETURN(const Item* stamp,
                          FindOne(header, tag::kTimeStamp, Type::kDateTime));
  if (stamp != nullptr) r.time_stamp = stamp->date_time();
  VCRYPT_ASSIGN_OR_RETURN(const Item* count,
                          Require(header, tag::kBatchCount, Type::kInteger));

  for (size_t i = 1; i < root.children.size(); ++i) {
    const Item& c = root.children[i];
    if (c.tag != tag::kBatchItem) {
      return Bad("unexpected " + TagName(c.tag) + " in Response Message" +
                 At(c));
    }
    VCRYPT_ASSIGN_OR_RETURN(ResponseItem item, ParseBatchItem(c));
    r.items.push_back(item);
  }
  if (r.items.empty()) return Bad("no batch items" + At(root));
  if (count->integer() < 0 ||
      static_cast<size_t>(count->integer()) != r.items.size()) {
    return Bad("Batch Count " + std::to_string(count->integer()) +
               " but the message has " + std::to_string(r.items.size()) +
               " batch items");
  }
  return r;
}

Result<std::vector<const ResponseItem*>> MatchResponse(
    const EncodedRequest& request, const Response& response) {
  const size_t n = request.operations.size();
  if (n == 0 || request.batch_item_ids.size() != n) {
    return MakeError(ErrorCode::kInternal,
                     "KMIP: MatchResponse with an empty or inconsistent "
                     "request");
  }
  // A message-level error (e.g. PyKMIP's "Invalid Message") answers the
  // whole request, whatever its version.
  if (response.items.size() == 1) {
    const ResponseItem& only = response.items[0];
    if (!only.ok() && !only.operation.has_value() &&
        only.batch_item_id.empty()) {
      return std::vector<const ResponseItem*>(n, &only);
    }
  }
  if (response.version.major != request.version.major ||
      response.version.minor > request.version.minor) {
    return Bad("protocol version " + VersionString(response.version) +
               " in the reply to a " + VersionString(request.version) +
               " request");
  }
  std::vector<const ResponseItem*> out(n, nullptr);
  const bool with_ids = !request.batch_item_ids[0].empty();
  if (!with_ids) {
    // Only single-item requests go without IDs (EncodeRequest enforces it).
    if (n != 1 || response.items.size() != 1) {
      return Bad(std::to_string(response.items.size()) +
                 " batch items in the reply to a request of " +
                 std::to_string(n));
    }
    out[0] = &response.items[0];
  } else {
    for (const ResponseItem& item : response.items) {
      if (item.batch_item_id.empty()) {
        return Bad("batch item without Unique Batch Item ID at offset " +
                   std::to_string(item.offset));
      }
      size_t j = 0;
      while (j < n &&
             !std::equal(item.batch_item_id.begin(), item.batch_item_id.end(),
                         request.batch_item_ids[j].begin(),
                         request.batch_item_ids[j].end())) {
        ++j;
      }
      if (j == n) {
        return Bad(
            "batch item with a Unique Batch Item ID that is not in "
            "the request at offset " +
            std::to_string(item.offset));
      }
      if (out[j] != nullptr) {
        return Bad("two batch items answer request item " +
                   std::to_string(j + 1) + " (second at offset " +
                   std::to_string(item.offset) + ")");
      }
      out[j] = &item;
    }
  }
  for (size_t j = 0; j < n; ++j) {
    if (out[j] != nullptr && out[j]->operation.has_value() &&
        *out[j]->operation != request.operations[j]) {
      return Bad("request item " + std::to_string(j + 1) + " was " +
                 OperationName(request.operations[j]) +
                 " but its reply is for " + OperationName(*out[j]->operation));
    }
  }
  return out;
}

std::string KmipResultError::Describe() const {
  std::string op = operation.has_value() ? OperationName(*operation)
                                         : std::string("the request");
  std::string s = "KMS refused " + op + ": ";
  if (reason.has_value()) {
    s += ResultReasonName(*reason) + " (reason " +
         Hex(static_cast<uint32_t>(*reason)) + ")";
  } else {
    s += ResultStatusName(status);
  }
  if (status == ResultStatus::kOperationPending) {
    s += " (asynchronous operations are not supported)";
  } else if (status == ResultStatus::kOperationUndone) {
    s += " (operation undone)";
  }
  if (!message.empty()) s += ": " + message;
  return s;
}

Error KmipResultError::ToError() const {
  return MakeError(ErrorCode::kKeyUnavailable, Describe());
}

std::optional<KmipResultError> ResultErrorOf(const ResponseItem& item,
                                             Operation requested) {
  if (item.ok()) return std::nullopt;
  KmipResultError e;
  e.operation = item.operation.value_or(requested);
  e.status = item.status;
  e.reason = item.reason;
  e.message = Sanitize(item.message);
  return e;
}

Result<std::string> ParseCreate(const ResponseItem* item) {
  VCRYPT_ASSIGN_OR_RETURN(const Item* p,
                          SuccessPayload(item, Operation::kCreate));
  VCRYPT_ASSIGN_OR_RETURN(const Item* type,
                          Require(*p, tag::kObjectType, Type::kEnumeration));
  const auto ot = static_cast<ObjectType>(type->enumeration());
  if (ot != ObjectType::kSymmetricKey) {
    return Bad("Create made a " + ObjectTypeName(ot) + ", not a Symmetric Key");
  }
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* uid, Require(*p, tag::kUniqueIdentifier, Type::kTextString));
  if (uid->text().empty()) return Bad("Create returned an empty identifier");
  return std::string(uid->text());
}

Status ParseActivate(const ResponseItem* item, std::string_view expected_uid) {
  return ParseUidEcho(item, Operation::kActivate, expected_uid);
}
Status ParseRevoke(const ResponseItem* item, std::string_view expected_uid) {
  return ParseUidEcho(item, Operation::kRevoke, expected_uid);
}
Status ParseDestroy(const ResponseItem* item, std::string_view expected_uid) {
  return ParseUidEcho(item, Operation::kDestroy, expected_uid);
}

Result<SymmetricKey> ParseGetSymmetricKey(const ResponseItem* item) {
  VCRYPT_ASSIGN_OR_RETURN(const Item* p, SuccessPayload(item, Operation::kGet));
  VCRYPT_ASSIGN_OR_RETURN(const Item* type,
                          Require(*p, tag::kObjectType, Type::kEnumeration));
  const auto ot = static_cast<ObjectType>(type->enumeration());
  if (ot != ObjectType::kSymmetricKey) {
    return Bad("Get returned a " + ObjectTypeName(ot) +
               ", not a Symmetric Key");
  }
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* uid, Require(*p, tag::kUniqueIdentifier, Type::kTextString));
  VCRYPT_ASSIGN_OR_RETURN(const Item* sk,
                          Require(*p, tag::kSymmetricKey, Type::kStructure));
  VCRYPT_ASSIGN_OR_RETURN(const Item* kb,
                          Require(*sk, tag::kKeyBlock, Type::kStructure));
  VCRYPT_ASSIGN_OR_RETURN(const Item* format, Require(*kb, tag::kKeyFormatType,
                                                      Type::kEnumeration));
  if (format->enumeration() != static_cast<uint32_t>(KeyFormatType::kRaw)) {
    return Bad("key in format " + Hex(format->enumeration()) +
               ", vcrypt needs Raw (0x1)");
  }
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* compression,
      FindOne(*kb, tag::kKeyCompressionType, Type::kEnumeration));
  if (compression != nullptr) return Bad("compressed key" + At(*compression));
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* wrapping,
      FindOne(*kb, tag::kKeyWrappingData, Type::kStructure));
  if (wrapping != nullptr) {
    return Bad(
        "the KMS returned a wrapped key; vcrypt asks for it "
        "unwrapped" +
        At(*wrapping));
  }
  // Unwrapped, the Key Value is a structure holding the Key Material.
  VCRYPT_ASSIGN_OR_RETURN(const Item* value,
                          Require(*kb, tag::kKeyValue, Type::kStructure));
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* material,
      Require(*value, tag::kKeyMaterial, Type::kByteString));
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* algorithm,
      Require(*kb, tag::kCryptographicAlgorithm, Type::kEnumeration));
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* length,
      Require(*kb, tag::kCryptographicLength, Type::kInteger));
  if (material->bytes.empty()) return Bad("empty Key Material" + At(*material));
  if (length->integer() <= 0) {
    return Bad("Cryptographic Length " + std::to_string(length->integer()) +
               At(*length));
  }
  SymmetricKey out;
  out.unique_identifier = std::string(uid->text());
  out.algorithm = static_cast<CryptographicAlgorithm>(algorithm->enumeration());
  out.length_bits = length->integer();
  // The one copy of the key: response buffer -> SecureBuffer.
  out.key = SecureBuffer::CopyOf(material->bytes);
  return out;
}

Result<SecureBuffer> ParseGetAes256(const ResponseItem* item,
                                    std::string_view expected_uid) {
  VCRYPT_ASSIGN_OR_RETURN(SymmetricKey k, ParseGetSymmetricKey(item));
  if (k.unique_identifier != expected_uid) {
    return Bad("Get answered for object '" + Sanitize(k.unique_identifier, 64) +
               "', not '" + Sanitize(expected_uid, 64) + "'");
  }
  if (k.algorithm != CryptographicAlgorithm::kAes || k.length_bits != 256 ||
      k.key.size() != 32) {
    return Bad("key '" + Sanitize(k.unique_identifier, 64) +
               "' is not AES-256 (algorithm " +
               Hex(static_cast<uint32_t>(k.algorithm)) + ", " +
               std::to_string(k.length_bits) + " bits, " +
               std::to_string(k.key.size()) + " bytes)");
  }
  return std::move(k.key);
}

Result<std::vector<std::string>> ParseLocate(const ResponseItem* item) {
  VCRYPT_ASSIGN_OR_RETURN(const Item* p,
                          SuccessPayload(item, Operation::kLocate));
  std::vector<std::string> out;
  for (const Item* uid : p->FindAll(tag::kUniqueIdentifier)) {
    out.emplace_back(uid->text());
  }
  return out;
}

Result<std::vector<ProtocolVersion>> ParseDiscoverVersions(
    const ResponseItem* item) {
  VCRYPT_ASSIGN_OR_RETURN(const Item* p,
                          SuccessPayload(item, Operation::kDiscoverVersions));
  std::vector<ProtocolVersion> out;
  for (const Item* v : p->FindAll(tag::kProtocolVersion)) {
    VCRYPT_ASSIGN_OR_RETURN(ProtocolVersion pv, ParseVersion(*v));
    out.push_back(pv);
  }
  return out;
}

Result<QueryResult> ParseQuery(const ResponseItem* item) {
  VCRYPT_ASSIGN_OR_RETURN(const Item* p,
                          SuccessPayload(item, Operation::kQuery));
  QueryResult out;
  for (const Item* op : p->FindAll(tag::kOperation)) {
    out.operations.push_back(static_cast<Operation>(op->enumeration()));
  }
  for (const Item* ot : p->FindAll(tag::kObjectType)) {
    out.object_types.push_back(static_cast<ObjectType>(ot->enumeration()));
  }
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* vendor,
      FindOne(*p, tag::kVendorIdentification, Type::kTextString));
  if (vendor != nullptr) out.vendor_identification = Sanitize(vendor->text());
  return out;
}

Result<GetAttributesResult> ParseGetAttributes(const ResponseItem* item) {
  VCRYPT_ASSIGN_OR_RETURN(const Item* p,
                          SuccessPayload(item, Operation::kGetAttributes));
  VCRYPT_ASSIGN_OR_RETURN(
      const Item* uid, Require(*p, tag::kUniqueIdentifier, Type::kTextString));
  GetAttributesResult out;
  out.unique_identifier = std::string(uid->text());
  for (const Item* a : p->FindAll(tag::kAttribute)) {
    AttributeView view;
    VCRYPT_ASSIGN_OR_RETURN(
        const Item* name, Require(*a, tag::kAttributeName, Type::kTextString));
    view.name = name->text();
    VCRYPT_ASSIGN_OR_RETURN(const Item* index,
                            FindOne(*a, tag::kAttributeIndex, Type::kInteger));
    if (index != nullptr) view.index = index->integer();
    const std::vector<const Item*> values = a->FindAll(tag::kAttributeValue);
    if (values.size() != 1) {
      return Bad("Attribute '" + Sanitize(view.name, 64) + "' has " +
                 std::to_string(values.size()) + " Attribute Values" + At(*a));
    }
    view.value = values[0];
    out.attributes.push_back(view);
  }
  return out;
}

Result<KeyAttributes> SummarizeAttributes(
    std::span<const AttributeView> attributes) {
  KeyAttributes out;
  for (const AttributeView& a : attributes) {
    if (a.value == nullptr) return Bad("attribute without value");
    const Item& v = *a.value;
    auto want = [&](Type t) -> Status {
      if (v.type != t) {
        return Bad("attribute '" + Sanitize(a.name, 64) + "' is a " +
                   ttlv::TypeName(v.type) + ", expected " + ttlv::TypeName(t) +
                   At(v));
      }
      return Status::Ok();
    };
    if (a.name == "Object Type") {
      VCRYPT_RETURN_IF_ERROR(want(Type::kEnumeration));
      out.object_type = static_cast<ObjectType>(v.enumeration());
    } else if (a.name == "State") {
      VCRYPT_RETURN_IF_ERROR(want(Type::kEnumeration));
      out.state = static_cast<State>(v.enumeration());
    } else if (a.name == "Cryptographic Algorithm") {
      VCRYPT_RETURN_IF_ERROR(want(Type::kEnumeration));
      out.algorithm = static_cast<CryptographicAlgorithm>(v.enumeration());
    } else if (a.name == "Cryptographic Length") {
      VCRYPT_RETURN_IF_ERROR(want(Type::kInteger));
      out.length_bits = v.integer();
    } else if (a.name == "Cryptographic Usage Mask") {
      VCRYPT_RETURN_IF_ERROR(want(Type::kInteger));
      out.usage_mask = v.integer();
    } else if (a.name == "Name") {
      VCRYPT_RETURN_IF_ERROR(want(Type::kStructure));
      VCRYPT_ASSIGN_OR_RETURN(const Item* nv,
                              Require(v, tag::kNameValue, Type::kTextString));
      out.names.emplace_back(nv->text());
    }
  }
  return out;
}

}  // namespace vcrypt::kmip
