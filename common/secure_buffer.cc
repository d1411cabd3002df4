#include "common/secure_buffer.h"

#include <openssl/crypto.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <utility>

namespace vcrypt {
namespace {
size_t PageRound(size_t n) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}
SecureBuffer::ReleaseHook g_release_hook = nullptr;
}  // namespace

void SecureBuffer::SetReleaseHookForTesting(ReleaseHook hook) {
  g_release_hook = hook;
}

SecureBuffer::SecureBuffer(size_t size) : size_(size) {
  if (size == 0) return;
  mapped_ = PageRound(size);
  void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) std::abort();
  data_ = static_cast<uint8_t*>(p);
  // Best effort; see header. MADV_DONTDUMP before any secret is written.
  madvise(p, mapped_, MADV_DONTDUMP);
  locked_ = mlock(p, mapped_) == 0;
}

SecureBuffer SecureBuffer::CopyOf(std::span<const uint8_t> bytes) {
  SecureBuffer b(bytes.size());
  if (!bytes.empty()) std::memcpy(b.data_, bytes.data(), bytes.size());
  return b;
}

SecureBuffer::SecureBuffer(SecureBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)),
      locked_(std::exchange(other.locked_, false)) {}

SecureBuffer& SecureBuffer::operator=(SecureBuffer&& other) noexcept {
  if (this != &other) {
    Clear();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
    locked_ = std::exchange(other.locked_, false);
  }
  return *this;
}

SecureBuffer::~SecureBuffer() { Clear(); }

void SecureBuffer::Truncate(size_t new_size) {
  if (new_size >= size_) return;
  OPENSSL_cleanse(data_ + new_size, size_ - new_size);
  size_ = new_size;
}

void SecureBuffer::Clear() {
  if (data_ == nullptr) return;
  // Wipe the whole mapping, not only size_: Truncate may have left bytes.
  OPENSSL_cleanse(data_, mapped_);
  if (g_release_hook != nullptr) g_release_hook(data_, mapped_);
  if (locked_) munlock(data_, mapped_);
  munmap(data_, mapped_);
  data_ = nullptr;
  size_ = 0;
  mapped_ = 0;
  locked_ = false;
}

SecureBuffer SecureBuffer::Clone() const { return CopyOf(span()); }

bool SecureBuffer::Equals(const SecureBuffer& other) const {
  if (size_ != other.size_) return false;
  if (size_ == 0) return true;
  return CRYPTO_memcmp(data_, other.data_, size_) == 0;
}

}  // namespace vcrypt
