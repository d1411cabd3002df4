#include "probe/luks2_metadata.h"

// The one-call SHA-256 of OpenSSL's low-level API, deprecated in 3.0 in
// favour of EVP. EVP's first digest loads OpenSSL's configuration and
// provider machinery, ~50 ms of CPU per process under emulation: more than
// the rest of this program. The low-level function computes the same
// digest with no set-up.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <string_view>
#include <vector>

namespace vcrypt {
namespace {

// The binary header (LUKS2 on-disk format, big-endian fields).
constexpr size_t kBinSize = 4096;
constexpr size_t kOffVersion = 6;
constexpr size_t kOffHdrSize = 8;
constexpr size_t kOffSeqid = 16;
constexpr size_t kOffCsumAlg = 72;
constexpr size_t kCsumAlgLen = 32;
constexpr size_t kOffUuid = 168;
constexpr size_t kUuidLen = 40;
constexpr size_t kOffHdrOffset = 256;
constexpr size_t kOffCsum = 448;
constexpr size_t kCsumLen = 64;
constexpr unsigned char kMagicPrimary[6] = {'L', 'U', 'K', 'S', 0xba, 0xbe};
constexpr unsigned char kMagicSecondary[6] = {'S', 'K', 'U', 'L', 0xba, 0xbe};

uint64_t Be(const unsigned char* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v = (v << 8) | p[i];
  return v;
}

// A NUL-terminated string field of at most `n` bytes.
std::string Field(const unsigned char* p, size_t n) {
  const void* nul = std::memchr(p, 0, n);
  size_t len =
      nul ? static_cast<size_t>(static_cast<const unsigned char*>(nul) - p) : n;
  return std::string(reinterpret_cast<const char*>(p), len);
}

bool ValidHdrSize(uint64_t s) {
  for (uint64_t v = 16 << 10; v <= (4 << 20); v <<= 1)
    if (s == v) return true;
  return false;
}

bool ReadAt(int fd, std::vector<unsigned char>* buf, uint64_t off,
            std::string* why) {
  size_t done = 0;
  while (done < buf->size()) {
    ssize_t n = pread(fd, buf->data() + done, buf->size() - done,
                      static_cast<off_t>(off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *why = std::string("read error: ") + std::strerror(errno);
      return false;
    }
    if (n == 0) {
      *why = "the device ends inside the LUKS2 header";
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

// One header copy (binary header + JSON area, `hdr_size` bytes) at `off`.
struct Copy {
  std::vector<unsigned char> bytes;
  uint64_t hdr_size = 0;
  uint64_t seqid = 0;
};

std::optional<Copy> ReadCopy(int fd, uint64_t off,
                             const unsigned char (&magic)[6],
                             std::string* why) {
  Copy c;
  c.bytes.resize(kBinSize);
  if (!ReadAt(fd, &c.bytes, off, why)) return std::nullopt;
  const unsigned char* b = c.bytes.data();
  if (std::memcmp(b, magic, sizeof(magic)) != 0) {
    *why = off == 0 ? "no LUKS magic"
                    : "no secondary LUKS2 header where the primary says";
    return std::nullopt;
  }
  if (Be(b + kOffVersion, 2) != 2) {
    *why = "not LUKS2";
    return std::nullopt;
  }
  c.hdr_size = Be(b + kOffHdrSize, 8);
  c.seqid = Be(b + kOffSeqid, 8);
  if (!ValidHdrSize(c.hdr_size) || Be(b + kOffHdrOffset, 8) != off) {
    *why = "unusual LUKS2 header size or offset";
    return std::nullopt;
  }
  if (Field(b + kOffCsumAlg, kCsumAlgLen) != "sha256") {
    *why = "LUKS2 header checksum is not sha256";
    return std::nullopt;
  }
  c.bytes.resize(c.hdr_size);
  std::vector<unsigned char> rest(c.hdr_size - kBinSize);
  if (!ReadAt(fd, &rest, off + kBinSize, why)) return std::nullopt;
  std::memcpy(c.bytes.data() + kBinSize, rest.data(), rest.size());

  unsigned char stored[kCsumLen];
  std::memcpy(stored, c.bytes.data() + kOffCsum, kCsumLen);
  std::memset(c.bytes.data() + kOffCsum, 0, kCsumLen);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(c.bytes.data(), c.bytes.size(), digest);
  std::memcpy(c.bytes.data() + kOffCsum, stored, kCsumLen);
  if (std::memcmp(digest, stored, sizeof(digest)) != 0) {
    *why = "LUKS2 header checksum mismatch";
    return std::nullopt;
  }
  return c;
}

}  // namespace

std::optional<Luks2Metadata> ReadLuks2Metadata(int fd, std::string* why) {
  auto primary = ReadCopy(fd, 0, kMagicPrimary, why);
  if (!primary) return std::nullopt;
  auto secondary = ReadCopy(fd, primary->hdr_size, kMagicSecondary, why);
  if (!secondary) return std::nullopt;
  if (secondary->hdr_size != primary->hdr_size ||
      secondary->seqid != primary->seqid) {
    *why = "the two LUKS2 header copies differ";
    return std::nullopt;
  }

  const unsigned char* area = primary->bytes.data() + kBinSize;
  size_t area_len = primary->bytes.size() - kBinSize;
  const void* nul = std::memchr(area, 0, area_len);
  if (nul == nullptr) {
    *why = "the LUKS2 JSON area is not terminated";
    return std::nullopt;
  }
  std::string_view text(
      reinterpret_cast<const char*>(area),
      static_cast<size_t>(static_cast<const unsigned char*>(nul) - area));
  // A duplicated member anywhere: parsers (json-c in libcryptsetup, this
  // one) may disagree on which copy counts, so let libcryptsetup decide.
  std::vector<std::set<std::string>> keys;
  bool duplicate = false;
  nlohmann::json::parser_callback_t cb =
      [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
        using E = nlohmann::json::parse_event_t;
        if (ev == E::object_start) {
          keys.emplace_back();
        } else if (ev == E::object_end) {
          if (!keys.empty()) keys.pop_back();
        } else if (ev == E::key && !keys.empty() && parsed.is_string()) {
          if (!keys.back().insert(parsed.get<std::string>()).second)
            duplicate = true;
        }
        return true;
      };
  nlohmann::json j =
      nlohmann::json::parse(text, cb, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    *why = "the LUKS2 JSON area is not a JSON object";
    return std::nullopt;
  }
  if (duplicate) {
    *why = "the LUKS2 JSON area has a duplicated member";
    return std::nullopt;
  }
  Luks2Metadata m;
  m.uuid = Field(primary->bytes.data() + kOffUuid, kUuidLen);
  m.seqid = primary->seqid;
  m.json = std::move(j);
  return m;
}

}  // namespace vcrypt
