// SecureBuffer: the only type that holds key material.
//
// Contract:
//  - Memory comes from its own anonymous mapping, is mlock()ed (never
//    swapped) and marked MADV_DONTDUMP (never in a core dump).
//  - It is wiped with OPENSSL_cleanse before it is unmapped, and on Resize.
//  - It is move-only: the bytes exist in exactly one place. There is
//    deliberately no conversion to or from std::string.
//  - A failure of mlock is not fatal (an unprivileged unit test may hit
//    RLIMIT_MEMLOCK) but is reported by locked(); vcryptd refuses to run
//    with unlocked key memory.
#ifndef VCRYPT_COMMON_SECURE_BUFFER_H_
#define VCRYPT_COMMON_SECURE_BUFFER_H_

#include <cstddef>
#include <cstdint>
#include <span>

namespace vcrypt {

class SecureBuffer {
 public:
  SecureBuffer() = default;
  // Zero-filled buffer of `size` bytes. Aborts on allocation failure
  // (like operator new), since callers cannot proceed without it.
  explicit SecureBuffer(size_t size);
  // Copies `bytes` in. The caller remains responsible for wiping the source.
  static SecureBuffer CopyOf(std::span<const uint8_t> bytes);

  SecureBuffer(const SecureBuffer&) = delete;
  SecureBuffer& operator=(const SecureBuffer&) = delete;
  SecureBuffer(SecureBuffer&& other) noexcept;
  SecureBuffer& operator=(SecureBuffer&& other) noexcept;
  ~SecureBuffer();

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  char* chars() { return reinterpret_cast<char*>(data_); }
  const char* chars() const { return reinterpret_cast<const char*>(data_); }
  std::span<uint8_t> span() { return {data_, size_}; }
  std::span<const uint8_t> span() const { return {data_, size_}; }
  bool locked() const { return locked_; }

  // Shrinks the logical size (e.g. after a decrypt wrote fewer bytes); the
  // bytes past the new size are wiped. Cannot grow.
  void Truncate(size_t new_size);
  // Wipes and releases the memory; the buffer becomes empty.
  void Clear();
  // An independent copy: explicit, so copies of keys are visible in review.
  SecureBuffer Clone() const;

  // Constant-time comparison of contents (sizes are not secret).
  bool Equals(const SecureBuffer& other) const;

  // Test hook: called with the whole mapping after it has been wiped and
  // just before it is unmapped, so a test can prove the wipe happened.
  using ReleaseHook = void (*)(const uint8_t* data, size_t mapped_size);
  static void SetReleaseHookForTesting(ReleaseHook hook);

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
  bool locked_ = false;
};

}  // namespace vcrypt

#endif  // VCRYPT_COMMON_SECURE_BUFFER_H_
