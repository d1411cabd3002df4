#include "trustauthority/eventlog.h"

#include <openssl/evp.h>
#include <tss2/tss2_tpm2_types.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <utility>

#include "common/handles.h"
#include "trustauthority/quote.h"

namespace vcrypt {
namespace {

constexpr size_t kPcrCount = 24;  // PC Client PCRs 0-23

// Little-endian reader over the log that never reads past its end.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> b) : b_(b) {}
  size_t offset() const { return off_; }
  size_t left() const { return b_.size() - off_; }
  bool done() const { return off_ == b_.size(); }
  bool U8(uint8_t* v) {
    if (left() < 1) return false;
    *v = b_[off_++];
    return true;
  }
  bool U16(uint16_t* v) {
    if (left() < 2) return false;
    *v = static_cast<uint16_t>(b_[off_] | b_[off_ + 1] << 8);
    off_ += 2;
    return true;
  }
  bool U32(uint32_t* v) {
    if (left() < 4) return false;
    *v = static_cast<uint32_t>(b_[off_]) |
         static_cast<uint32_t>(b_[off_ + 1]) << 8 |
         static_cast<uint32_t>(b_[off_ + 2]) << 16 |
         static_cast<uint32_t>(b_[off_ + 3]) << 24;
    off_ += 4;
    return true;
  }
  bool Bytes(size_t n, std::span<const uint8_t>* out) {
    if (left() < n) return false;
    *out = b_.subspan(off_, n);
    off_ += n;
    return true;
  }

 private:
  std::span<const uint8_t> b_;
  size_t off_ = 0;
};

Error Bad(size_t event, const std::string& what) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "event log: event " + std::to_string(event) + ": " + what);
}

// Algorithms whose digest size we know; anything else in a log is refused
// (its digests could not be checked, nor replayed).
size_t KnownDigestSize(uint16_t alg) {
  switch (alg) {
    case TPM2_ALG_SHA1:
      return 20;
    case TPM2_ALG_SHA256:
    case TPM2_ALG_SM3_256:
      return 32;
    case TPM2_ALG_SHA384:
      return 48;
    case TPM2_ALG_SHA512:
      return 64;
    default:
      return 0;
  }
}

std::string Hex16(uint16_t v) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%04x", v);
  return buf;
}

constexpr char kSpecIdSignature[16] = "Spec ID Event03";
constexpr char kStartupLocality[16] = "StartupLocality";

Status ParseSpecId(std::span<const uint8_t> data, EventLog* log) {
  Reader r(data);
  std::span<const uint8_t> sig;
  uint32_t platform_class, count;
  uint8_t minor, major, errata, uintn;
  if (!r.Bytes(16, &sig) || std::memcmp(sig.data(), kSpecIdSignature, 16) != 0)
    return Bad(0,
               "not a crypto-agile log (no \"Spec ID Event03\"; TPM 1.2 "
               "SHA-1 logs are not supported)");
  if (!r.U32(&platform_class) || !r.U8(&minor) || !r.U8(&major) ||
      !r.U8(&errata) || !r.U8(&uintn) || !r.U32(&count))
    return Bad(0, "Spec ID event truncated");
  if (major != 2)
    return Bad(
        0, "Spec ID event version " + std::to_string(major) + " (expected 2)");
  if (count == 0 || count > kMaxAlgorithms)
    return Bad(0, "Spec ID event lists " + std::to_string(count) +
                      " algorithms (1-" + std::to_string(kMaxAlgorithms) + ")");
  for (uint32_t i = 0; i < count; ++i) {
    EventLogAlgorithm a;
    if (!r.U16(&a.id) || !r.U16(&a.digest_size))
      return Bad(0, "Spec ID event truncated in its algorithm table");
    const size_t known = KnownDigestSize(a.id);
    if (known == 0)
      return Bad(0, "Spec ID event lists unknown algorithm " + Hex16(a.id));
    if (a.digest_size != known)
      return Bad(0, "Spec ID event gives algorithm " + Hex16(a.id) +
                        " digest size " + std::to_string(a.digest_size) +
                        " (it is " + std::to_string(known) + ")");
    for (const auto& b : log->algorithms)
      if (b.id == a.id)
        return Bad(0,
                   "Spec ID event lists algorithm " + Hex16(a.id) + " twice");
    log->algorithms.push_back(a);
  }
  uint8_t vendor_size;
  std::span<const uint8_t> vendor;
  if (!r.U8(&vendor_size) || !r.Bytes(vendor_size, &vendor))
    return Bad(0, "Spec ID event truncated in its vendor info");
  if (!r.done()) return Bad(0, "Spec ID event has trailing bytes");
  return Status::Ok();
}

// The first event: TCG_PCClientPCREvent (SHA-1 layout) with the Spec ID.
Status ParseFirst(Reader& r, EventLog* log) {
  uint32_t pcr, type, size;
  std::span<const uint8_t> digest, data;
  if (!r.U32(&pcr) || !r.U32(&type) || !r.Bytes(20, &digest) || !r.U32(&size))
    return Bad(0, "truncated header");
  if (pcr != 0 || type != kEvNoAction)
    return Bad(0,
               "not a crypto-agile log (the first event is not the "
               "EV_NO_ACTION Spec ID event)");
  if (size > kMaxEventDataSize)
    return Bad(0, "data size " + std::to_string(size) + " exceeds " +
                      std::to_string(kMaxEventDataSize));
  if (!r.Bytes(size, &data)) return Bad(0, "truncated data");
  return ParseSpecId(data, log);
}

const EventLogAlgorithm* FindAlg(const EventLog& log, uint16_t id) {
  for (const auto& a : log.algorithms)
    if (a.id == id) return &a;
  return nullptr;
}

// One TCG_PCR_EVENT2 record.
Result<EventLogEvent> ParseEvent2(Reader& r, const EventLog& log,
                                  size_t index) {
  EventLogEvent e;
  e.index = index;
  uint32_t count, size;
  if (!r.U32(&e.pcr) || !r.U32(&e.type) || !r.U32(&count))
    return Bad(index, "truncated header");
  if (e.pcr >= kPcrCount)
    return Bad(index, "PCR index " + std::to_string(e.pcr) + " (0-23)");
  if (count == 0 || count > log.algorithms.size())
    return Bad(index, std::to_string(count) + " digests (1-" +
                          std::to_string(log.algorithms.size()) +
                          ", the Spec ID event's algorithms)");
  for (uint32_t i = 0; i < count; ++i) {
    uint16_t alg;
    if (!r.U16(&alg)) return Bad(index, "truncated digest list");
    const EventLogAlgorithm* a = FindAlg(log, alg);
    if (a == nullptr)
      return Bad(index, "digest of algorithm " + Hex16(alg) +
                            ", which the Spec ID event does not list");
    for (const auto& d : e.digests)
      if (d.alg == alg)
        return Bad(index, "two digests of algorithm " + Hex16(alg));
    std::span<const uint8_t> digest;
    if (!r.Bytes(a->digest_size, &digest))
      return Bad(index, "truncated digest");
    e.digests.push_back({alg, {digest.begin(), digest.end()}});
  }
  if (!r.U32(&size)) return Bad(index, "truncated data size");
  if (size > kMaxEventDataSize)
    return Bad(index, "data size " + std::to_string(size) + " exceeds " +
                          std::to_string(kMaxEventDataSize));
  std::span<const uint8_t> data;
  if (!r.Bytes(size, &data))
    return Bad(index, "truncated data (" + std::to_string(size) +
                          " bytes announced, " + std::to_string(r.left()) +
                          " left)");
  e.data.assign(data.begin(), data.end());
  return e;
}

bool IsStartupLocality(const EventLogEvent& e) {
  return e.type == kEvNoAction && e.data.size() >= 16 &&
         std::memcmp(e.data.data(), kStartupLocality, 16) == 0;
}

constexpr std::pair<uint32_t, const char*> kTypeNames[] = {
    {0x00000000, "EV_PREBOOT_CERT"},
    {0x00000001, "EV_POST_CODE"},
    {0x00000002, "EV_UNUSED"},
    {0x00000003, "EV_NO_ACTION"},
    {0x00000004, "EV_SEPARATOR"},
    {0x00000005, "EV_ACTION"},
    {0x00000006, "EV_EVENT_TAG"},
    {0x00000007, "EV_S_CRTM_CONTENTS"},
    {0x00000008, "EV_S_CRTM_VERSION"},
    {0x00000009, "EV_CPU_MICROCODE"},
    {0x0000000a, "EV_PLATFORM_CONFIG_FLAGS"},
    {0x0000000b, "EV_TABLE_OF_DEVICES"},
    {0x0000000c, "EV_COMPACT_HASH"},
    {0x0000000d, "EV_IPL"},
    {0x0000000e, "EV_IPL_PARTITION_DATA"},
    {0x0000000f, "EV_NONHOST_CODE"},
    {0x00000010, "EV_NONHOST_CONFIG"},
    {0x00000011, "EV_NONHOST_INFO"},
    {0x00000012, "EV_OMIT_BOOT_DEVICE_EVENTS"},
    {0x00000013, "EV_POST_CODE2"},
    {0x80000001, "EV_EFI_VARIABLE_DRIVER_CONFIG"},
    {0x80000002, "EV_EFI_VARIABLE_BOOT"},
    {0x80000003, "EV_EFI_BOOT_SERVICES_APPLICATION"},
    {0x80000004, "EV_EFI_BOOT_SERVICES_DRIVER"},
    {0x80000005, "EV_EFI_RUNTIME_SERVICES_DRIVER"},
    {0x80000006, "EV_EFI_GPT_EVENT"},
    {0x80000007, "EV_EFI_ACTION"},
    {0x80000008, "EV_EFI_PLATFORM_FIRMWARE_BLOB"},
    {0x80000009, "EV_EFI_HANDOFF_TABLES"},
    {0x8000000a, "EV_EFI_PLATFORM_FIRMWARE_BLOB2"},
    {0x8000000b, "EV_EFI_HANDOFF_TABLES2"},
    {0x8000000c, "EV_EFI_VARIABLE_BOOT2"},
    {0x8000000d, "EV_EFI_GPT_EVENT2"},
    {0x80000010, "EV_EFI_HCRTM_EVENT"},
    {0x800000e0, "EV_EFI_VARIABLE_AUTHORITY"},
    {0x800000e1, "EV_EFI_SPDM_FIRMWARE_BLOB"},
    {0x800000e2, "EV_EFI_SPDM_FIRMWARE_CONFIG"},
};

}  // namespace

std::string EventTypeName(uint32_t type) {
  for (const auto& [t, n] : kTypeNames)
    if (t == type) return n;
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", type);
  return buf;
}

bool EventTypeFromName(const std::string& name, uint32_t* type) {
  for (const auto& [t, n] : kTypeNames)
    if (name == n) {
      *type = t;
      return true;
    }
  if (name.size() != 10 || name[0] != '0' || name[1] != 'x' ||
      name.find_first_not_of("0123456789abcdef", 2) != std::string::npos)
    return false;
  *type = static_cast<uint32_t>(std::stoul(name.substr(2), nullptr, 16));
  return true;
}

Result<EventLog> ParseEventLog(std::span<const uint8_t> bytes) {
  if (bytes.size() > kMaxEventLogSize)
    return MakeError(ErrorCode::kInvalidArgument,
                     "event log: " + std::to_string(bytes.size()) +
                         " bytes exceed the limit of " +
                         std::to_string(kMaxEventLogSize));
  EventLog log;
  Reader r(bytes);
  VCRYPT_RETURN_IF_ERROR(ParseFirst(r, &log));
  bool pcr0_extended = false, locality_seen = false;
  for (size_t index = 1; !r.done(); ++index) {
    if (log.events.size() >= kMaxEvents)
      return Bad(index, "more than " + std::to_string(kMaxEvents) + " events");
    VCRYPT_ASSIGN_OR_RETURN(EventLogEvent e, ParseEvent2(r, log, index));
    if (IsStartupLocality(e)) {
      if (e.pcr != 0 || e.data.size() != 17)
        return Bad(index, "malformed StartupLocality event");
      if (locality_seen) return Bad(index, "a second StartupLocality event");
      if (pcr0_extended)
        return Bad(index, "StartupLocality event after PCR 0 was extended");
      const uint8_t loc = e.data[16];
      if (loc != 0 && loc != 3 && loc != 4)
        return Bad(index,
                   "startup locality " + std::to_string(loc) + " (0, 3 or 4)");
      log.startup_locality = loc;
      locality_seen = true;
    }
    if (e.pcr == 0 && e.type != kEvNoAction) pcr0_extended = true;
    log.events.push_back(std::move(e));
  }
  return log;
}

Result<std::vector<std::vector<uint8_t>>> ReplayEventLog(
    const EventLog& log, uint16_t alg, std::span<const uint32_t> pcrs) {
  const EventLogAlgorithm* a = FindAlg(log, alg);
  const EVP_MD* md = TpmHashToEvp(alg);
  if (a == nullptr || md == nullptr ||
      static_cast<size_t>(EVP_MD_get_size(md)) != a->digest_size)
    return MakeError(ErrorCode::kInvalidArgument,
                     "event log: no " + Hex16(alg) + " bank to replay");
  std::vector<std::vector<uint8_t>> out;
  for (uint32_t pcr : pcrs) {
    if (pcr >= kPcrCount || (pcr >= 17 && pcr <= 22))
      return MakeError(ErrorCode::kInvalidArgument,
                       "event log: PCR " + std::to_string(pcr) +
                           " cannot be replayed from a firmware log");
    std::vector<uint8_t> v(a->digest_size, 0);
    if (pcr == 0) v.back() = log.startup_locality;
    for (const auto& e : log.events) {
      if (e.pcr != pcr || e.type == kEvNoAction) continue;
      const EventLogDigest* d = nullptr;
      for (const auto& x : e.digests)
        if (x.alg == alg) d = &x;
      if (d == nullptr)
        return Bad(e.index, "no " + Hex16(alg) + " digest to replay");
      unsigned int len = 0;
      std::array<uint8_t, EVP_MAX_MD_SIZE> next;
      EvpMdCtxPtr ctx(EVP_MD_CTX_new());
      const bool ok =
          ctx != nullptr && EVP_DigestInit_ex(ctx.get(), md, nullptr) == 1 &&
          EVP_DigestUpdate(ctx.get(), v.data(), v.size()) == 1 &&
          EVP_DigestUpdate(ctx.get(), d->digest.data(), d->digest.size()) ==
              1 &&
          EVP_DigestFinal_ex(ctx.get(), next.data(), &len) == 1;
      if (!ok || len != v.size())
        return MakeError(ErrorCode::kCrypto, "event log: hashing failed");
      std::copy(next.begin(), next.begin() + len, v.begin());
    }
    out.push_back(std::move(v));
  }
  return out;
}

}  // namespace vcrypt
