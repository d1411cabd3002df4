#include "common/random.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace vcrypt {

Status FillRandom(std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t r = getrandom(out.data() + done, out.size() - done, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kInternal,
                       std::string("getrandom failed: ") + std::strerror(errno));
    }
    done += static_cast<size_t>(r);
  }
  return Status::Ok();
}

Result<SecureBuffer> RandomKey(size_t size) {
  SecureBuffer key(size);
  VCRYPT_RETURN_IF_ERROR(FillRandom(key.span()));
  return key;
}

Result<std::string> RandomUuid() {
  uint8_t b[16];
  VCRYPT_RETURN_IF_ERROR(FillRandom(b));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  char s[37];
  std::snprintf(s, sizeof s,
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
                "%02x%02x%02x%02x%02x%02x",
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9],
                b[10], b[11], b[12], b[13], b[14], b[15]);
  return std::string(s);
}

Result<SecureBuffer> RandomRecoveryKey() {
  constexpr size_t kChars = kRecoveryKeyGroups * kRecoveryKeyGroupLength;
  static_assert(kRecoveryKeyAlphabet.size() == 16, "one nibble per character");
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer random, RandomKey(kChars / 2));
  SecureBuffer key(kRecoveryKeySize);
  size_t out = 0;
  for (size_t i = 0; i < kChars; ++i) {
    if (i > 0 && i % kRecoveryKeyGroupLength == 0) key.data()[out++] = '-';
    const uint8_t byte = random.data()[i / 2];
    const uint8_t nibble = (i % 2 == 0) ? byte >> 4 : byte & 0x0f;
    key.data()[out++] = static_cast<uint8_t>(kRecoveryKeyAlphabet[nibble]);
  }
  return key;
}

}  // namespace vcrypt
