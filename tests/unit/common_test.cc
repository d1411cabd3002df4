#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/hex.h"
#include "common/names.h"
#include "common/random.h"
#include "common/secure_buffer.h"

namespace vcrypt {
namespace {

class TempDir {
 public:
  TempDir() {
    char t[] = "/tmp/vcrypt-test-XXXXXX";
    path_ = mkdtemp(t);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Records what the release hook saw, to prove the wipe happened before
// the memory went back to the kernel.
bool g_hook_called = false;
bool g_hook_all_zero = false;
void RecordRelease(const uint8_t* data, size_t n) {
  g_hook_called = true;
  g_hook_all_zero = true;
  for (size_t i = 0; i < n; ++i)
    if (data[i] != 0) g_hook_all_zero = false;
}

TEST(SecureBufferTest, WipedBeforeRelease) {
  SecureBuffer::SetReleaseHookForTesting(RecordRelease);
  g_hook_called = false;
  {
    SecureBuffer b(64);
    std::memset(b.data(), 0xA5, b.size());
  }
  SecureBuffer::SetReleaseHookForTesting(nullptr);
  EXPECT_TRUE(g_hook_called);
  EXPECT_TRUE(g_hook_all_zero);
}

TEST(SecureBufferTest, TruncateWipesTail) {
  SecureBuffer b(32);
  std::memset(b.data(), 0xFF, 32);
  uint8_t* p = b.data();
  b.Truncate(8);
  EXPECT_EQ(b.size(), 8u);
  for (int i = 8; i < 32; ++i) EXPECT_EQ(p[i], 0) << i;
  EXPECT_EQ(p[0], 0xFF);
}

TEST(SecureBufferTest, MoveLeavesSourceEmpty) {
  SecureBuffer a(16);
  a.data()[0] = 7;
  const uint8_t* p = a.data();
  SecureBuffer b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.data()[0], 7);
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): contract
  EXPECT_EQ(a.data(), nullptr);
  static_assert(!std::is_copy_constructible_v<SecureBuffer>);
  static_assert(!std::is_copy_assignable_v<SecureBuffer>);
}

TEST(SecureBufferTest, EqualsComparesContents) {
  auto a = RandomKey(32);
  ASSERT_TRUE(a.ok());
  SecureBuffer b = a->Clone();
  EXPECT_TRUE(a->Equals(b));
  b.data()[31] ^= 1;
  EXPECT_FALSE(a->Equals(b));
  EXPECT_FALSE(a->Equals(SecureBuffer(31)));
}

TEST(RandomTest, KeysDiffer) {
  auto a = RandomKey(64), b = RandomKey(64);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE(a->Equals(*b));
  auto u = RandomUuid();
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->size(), 36u);
  EXPECT_EQ((*u)[14], '4');
}

TEST(Base64Test, RoundTripAndStrictness) {
  for (size_t n = 0; n < 20; ++n) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 37 + 1);
    auto d = Base64Decode(Base64Encode(v));
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(*d, v);
  }
  EXPECT_FALSE(Base64Decode("abc").ok());
  EXPECT_FALSE(Base64Decode("ab=c").ok());
  EXPECT_FALSE(Base64Decode("ab c").ok());
  EXPECT_FALSE(Base64Decode("a===").ok());
}

// What may be put into a path or printed for udev as a UUID.
TEST(NamesTest, UuidText) {
  EXPECT_TRUE(IsUuidText("0b6f0d6e-6b8e-4a43-9a7e-3f2b1c0d9e8f"));
  EXPECT_TRUE(IsUuidText("0B6F0D6E-6B8E-4A43-9A7E-3F2B1C0D9E8F"));
  for (const char* bad : {"", "0b6f0d6e6b8e4a439a7e3f2b1c0d9e8f",
                          "0b6f0d6e-6b8e-4a43-9a7e-3f2b1c0d9e8",
                          "0b6f0d6e-6b8e-4a43-9a7e-3f2b1c0d9e8g",
                          "0b6f0d6e-6b8e-4a43-9a7e_3f2b1c0d9e8f",
                          "../../../../../../../../etc/passwd\n"})
    EXPECT_FALSE(IsUuidText(bad)) << bad;
}

TEST(NamesTest, AcceptsAndRejects) {
  EXPECT_TRUE(ValidateVolumeNames("web-01", "disk0").ok());
  EXPECT_TRUE(ValidateVolumeNames("a.b_c", "root.img").ok());
  for (const char* bad : {"", "a/b", "..", "a..b", ".hidden", "-x", "a b",
                          "tab\t", "new\nline", "ü"}) {
    EXPECT_FALSE(ValidateVmName(bad).ok()) << bad;
    EXPECT_FALSE(ValidateDiskName(bad).ok()) << bad;
  }
  EXPECT_FALSE(ValidateDiskName("d-1").ok());  // keeps dm names unambiguous
  std::string vm(30, 'v'), disk(16, 'd');
  EXPECT_TRUE(ValidateVolumeNames(vm, disk).ok());         // 47 bytes
  EXPECT_FALSE(ValidateVolumeNames(vm, disk + "x").ok());  // 48 bytes
  auto st = ValidateVmName("a/b");
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(MappingName("vm1", "d0"), "vcrypt-vm1-d0");
}

TEST(AtomicFileTest, WritesAndReplaces) {
  TempDir d;
  std::string p = d.path() + "/state.json";
  ASSERT_TRUE(WriteFileAtomic(p, std::string("one")).ok());
  ASSERT_TRUE(WriteFileAtomic(p, std::string("two")).ok());
  auto r = ReadFile(p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "two");
  struct stat st;
  ASSERT_EQ(stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(ReadFile(d.path() + "/nope").error().code, ErrorCode::kNotFound);
}

int TempFilesIn(const std::string& dir) {
  int temps = 0;
  for (auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp.") != std::string::npos)
      ++temps;
  return temps;
}

// Runs `fn` in a child process and returns its exit status (or -1).
int InChild(const std::function<int()>& fn) {
  pid_t pid = fork();
  if (pid == 0) _exit(fn());
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
    return -1;
  return WEXITSTATUS(status);
}

// A real crash: a child process dies (_exit) after writing the temporary
// file and before the rename. The old contents must survive intact, and
// the leftover, once over a minute old, must go at the first write into
// the directory of a later process (this one: it has not written there).
TEST(AtomicFileTest, CrashBeforeRenameKeepsOldFile) {
  TempDir d;
  std::string p = d.path() + "/inventory.json";
  ASSERT_EQ(InChild([&] {
              return WriteFileAtomic(p, std::string("old contents")).ok() ? 0
                                                                          : 1;
            }),
            0);
  ASSERT_EQ(InChild([&] {
              AtomicWriteOptions o;
              o.before_rename = [] { _exit(42); };
              (void)WriteFileAtomic(p, std::string("never visible"), o);
              return 0;
            }),
            42);  // it really died mid-write
  EXPECT_EQ(*ReadFile(p), "old contents");
  ASSERT_EQ(TempFilesIn(d.path()), 1);  // the dead writer's temp file
  // Two minutes old, as if the service restarted after the crash.
  for (auto& e : std::filesystem::directory_iterator(d.path())) {
    if (e.path().filename().string().find(".tmp.") == std::string::npos)
      continue;
    timespec old_times[2] = {{time(nullptr) - 120, 0},
                             {time(nullptr) - 120, 0}};
    ASSERT_EQ(utimensat(AT_FDCWD, e.path().c_str(), old_times, 0), 0);
  }
  ASSERT_TRUE(WriteFileAtomic(p, std::string("next")).ok());
  EXPECT_EQ(TempFilesIn(d.path()), 0);
  EXPECT_EQ(*ReadFile(p), "next");
}

// Another writer's temporary file (a thread or a replica sharing the
// directory, mid-write) is not a leftover: a write must never remove it,
// or that writer's rename fails. It used to be removed by any write of the
// same file.
TEST(AtomicFileTest, AYoungTempFileOfAnotherWriterIsKept) {
  TempDir d;
  const std::string p = d.path() + "/host.json";
  const std::string theirs = p + ".tmp.AbC123";
  std::ofstream(theirs) << "half of their record";
  ASSERT_TRUE(WriteFileAtomic(p, std::string("mine")).ok());
  EXPECT_TRUE(std::filesystem::exists(theirs));
}

TEST(AtomicFileTest, ConcurrentWritersOfOneFileAllSucceed) {
  TempDir d;
  const std::string p = d.path() + "/host.json";
  std::atomic<int> failures{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t)
    writers.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i)
        if (!WriteFileAtomic(p, "writer " + std::to_string(t)).ok()) ++failures;
    });
  for (auto& w : writers) w.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(ReadFile(p)->rfind("writer ", 0), 0u);
  EXPECT_EQ(TempFilesIn(d.path()), 0);
}

// Of writers racing to create one file, exactly one wins, its contents
// whole; the others get kExists and leave nothing behind.
TEST(AtomicFileTest, CreateFileOnceHasOneWinner) {
  TempDir d;
  const std::string p = d.path() + "/pin";
  std::atomic<int> won{0}, exists{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 8; ++t)
    writers.emplace_back([&, t] {
      const std::string text = "writer " + std::to_string(t);
      Status st = CreateFileOnce(
          p, std::span<const uint8_t>(
                 reinterpret_cast<const uint8_t*>(text.data()), text.size()));
      if (st.ok())
        ++won;
      else if (st.error().code == ErrorCode::kExists)
        ++exists;
    });
  for (auto& w : writers) w.join();
  EXPECT_EQ(won.load(), 1);
  EXPECT_EQ(exists.load(), 7);
  EXPECT_EQ(ReadFile(p)->rfind("writer ", 0), 0u);
  EXPECT_EQ(TempFilesIn(d.path()), 0);
  struct stat st;
  ASSERT_EQ(stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(AtomicFileTest, MissingDirectoryIsAnError) {
  auto st = WriteFileAtomic("/nonexistent-dir-vcrypt/x", std::string("a"));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kIo);
}

}  // namespace
}  // namespace vcrypt

namespace vcrypt {
namespace {

TEST(HexTest, EncodesLowercaseAndDecodesEitherCase) {
  const std::vector<uint8_t> b = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xff};
  EXPECT_EQ(HexEncode(b), "00017f80abff");
  EXPECT_EQ(HexEncode({}), "");
  auto lower = HexDecode("00017f80abff");
  ASSERT_TRUE(lower.ok());
  EXPECT_EQ(*lower, b);
  auto upper = HexDecode("00017F80ABFF");
  ASSERT_TRUE(upper.ok());
  EXPECT_EQ(*upper, b);
  auto empty = HexDecode("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(HexTest, DecodeIsStrict) {
  for (const char* bad : {"0", "abc", "0g", "g0", " 00", "00 ", "0x00", "+1"}) {
    auto r = HexDecode(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace vcrypt
