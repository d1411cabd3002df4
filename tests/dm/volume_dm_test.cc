// Block-layer tests of dmtools/volume.h against the real kernel (over 800
// lines: one binary, one guest boot, one fixture for all of them): LUKS2
// format through libcryptsetup, dm-crypt activation, the live dm table,
// loop devices. They need root and device-mapper, so they run in the test
// VM:
//   tests/vm/run.sh -- build/tests/dm/vcrypt_dm_tests
// Not root: every test is skipped. Root without device-mapper: the
// DmTest/Environment tests FAIL (this binary is meant for the VM; a silent
// skip would hide a broken harness). The VolumeFormatTest cases need no
// device-mapper and also run on a plain host as root.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <libcryptsetup.h>
#include <libdevmapper.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/aead.h"
#include "common/handles.h"
#include "common/names.h"
#include "common/random.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"
#include "tests/test_util.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kFileSize = 40 * kMiB;

bool IsRoot() { return geteuid() == 0; }

std::string MappingPrefix() {
  return "vcrypt-dmtest" + std::to_string(getpid()) + "-";
}

struct TempDir : testing::TempDir {
  TempDir() : testing::TempDir("dmtest") {}
};

void MakeSparseFile(const std::string& path, uint64_t size) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid()) << path << ": " << strerror(errno);
  ASSERT_EQ(ftruncate(fd.get(), static_cast<off_t>(size)), 0);
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::error_code ec;
  std::vector<uint8_t> buf(fs::file_size(path, ec));
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(buf.data()),
          static_cast<std::streamsize>(buf.size()));
  EXPECT_EQ(static_cast<size_t>(in.gcount()), buf.size()) << path;
  return buf;
}

std::vector<uint8_t> ReadAt(const std::string& path, uint64_t off, size_t len) {
  std::vector<uint8_t> buf(len);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_TRUE(fd.valid()) << path;
  ssize_t n = pread(fd.get(), buf.data(), len, static_cast<off_t>(off));
  EXPECT_EQ(n, static_cast<ssize_t>(len)) << path;
  return buf;
}

void WriteAt(const std::string& path, uint64_t off,
             const std::vector<uint8_t>& data) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid()) << path << ": " << strerror(errno);
  ASSERT_EQ(pwrite(fd.get(), data.data(), data.size(), static_cast<off_t>(off)),
            static_cast<ssize_t>(data.size()));
  ASSERT_EQ(fsync(fd.get()), 0);
}

std::vector<uint8_t> Pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(i * 31 + seed);
  return v;
}

// Loop devices whose backing file is `path`.
std::vector<std::string> LoopsBacking(const std::string& path) {
  std::vector<std::string> out;
  std::error_code ec;
  std::string want = fs::weakly_canonical(path, ec).string();
  for (const auto& e : fs::directory_iterator("/sys/block", ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind("loop", 0) != 0) continue;
    std::ifstream in(e.path() / "loop" / "backing_file");
    std::string f;
    if (in && std::getline(in, f) && f == want) out.push_back(n);
  }
  return out;
}

// A key-encryption key and token for a test volume, wrapped for real.
std::string MakeTokenJson(const std::string& uuid, const std::string& vm,
                          const std::string& disk,
                          const std::string& kek_id = "kek-1") {
  VcryptToken t;
  t.vm = vm;
  t.disk = disk;
  t.provider_name = "test-native";
  t.provider_type = "native";
  t.kek.kek_id = kek_id;
  auto kek = RandomKey(kAeadKeySize);
  auto dek = RandomKey(kDekSize);
  EXPECT_TRUE(kek.ok() && dek.ok());
  auto w = WrapKey(*kek, *dek, DekAad(uuid, t.kek.kek_id, t.provider_name));
  EXPECT_TRUE(w.ok());
  t.dek = std::move(w).value();
  return t.ToJsonString();
}

SecureBuffer NewDek() {
  auto d = RandomKey(kDekSize);
  EXPECT_TRUE(d.ok());
  return std::move(d).value();
}

Result<std::string> Format(const std::string& device, const SecureBuffer& dek,
                           uint32_t sector = 4096, bool force = false,
                           const std::string& label = "vm1/disk0") {
  FormatParams p;
  p.device = device;
  p.sector_size = sector;
  p.label = label;
  p.force = force;
  return FormatVolume(p, dek, [](const std::string& uuid) {
    return Result<std::string>(MakeTokenJson(uuid, "vm1", "disk0"));
  });
}

// The crypt target's key field as libdevmapper returns it (what
// `dmsetup table --showkeys` prints), checked in place: the key itself is
// never copied into a std::string or printed.
struct TableKeyCheck {
  bool found = false;
  std::string cipher;
  size_t key_len = 0;
  bool key_all_hex = false;
};
TableKeyCheck CheckTableKey(const std::string& name) {
  TableKeyCheck out;
  DmTaskPtr dmt(dm_task_create(DM_DEVICE_TABLE));
  if (!dmt || !dm_task_set_name(dmt.get(), name.c_str()) ||
      !dm_task_secure_data(dmt.get()) || !dm_task_run(dmt.get())) {
    return out;
  }
  uint64_t start, length;
  char *type = nullptr, *params = nullptr;
  dm_get_next_target(dmt.get(), nullptr, &start, &length, &type, &params);
  if (type == nullptr || std::strcmp(type, "crypt") != 0 || params == nullptr) {
    return out;
  }
  out.found = true;
  const char* p = params;
  const char* sp = std::strchr(p, ' ');
  if (sp == nullptr) return out;
  out.cipher.assign(p, sp);
  const char* key = sp + 1;
  const char* key_end = std::strchr(key, ' ');
  if (key_end == nullptr) return out;
  out.key_len = static_cast<size_t>(key_end - key);
  out.key_all_hex = true;
  for (const char* c = key; c < key_end; ++c) {
    if (!std::isxdigit(static_cast<unsigned char>(*c))) out.key_all_hex = false;
  }
  return out;
}

// Removes any dm device directly (cleanup of non-crypt test mappings).
bool RemoveDm(const std::string& name) {
  DmTaskPtr dmt(dm_task_create(DM_DEVICE_REMOVE));
  return dmt && dm_task_set_name(dmt.get(), name.c_str()) &&
         dm_task_run(dmt.get());
}

bool HasOption(const MappingInfo& m, const std::string& opt) {
  for (const auto& o : m.options) {
    if (o == opt) return true;
  }
  return false;
}

// A loop device the test attaches itself (not auto-clear), to exercise the
// block-device paths.
class TestLoop {
 public:
  explicit TestLoop(const std::string& file) {
    UniqueFd ctl(open("/dev/loop-control", O_RDWR | O_CLOEXEC));
    if (!ctl.valid()) return;
    int n = ioctl(ctl.get(), LOOP_CTL_GET_FREE);
    if (n < 0) return;
    std::string dev = "/dev/loop" + std::to_string(n);
    UniqueFd backing(open(file.c_str(), O_RDWR | O_CLOEXEC));
    for (int i = 0; i < 100 && access(dev.c_str(), F_OK) != 0; ++i) {
      usleep(10000);
    }
    fd_ = UniqueFd(open(dev.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd_.valid() || !backing.valid()) return;
    if (ioctl(fd_.get(), LOOP_SET_FD, backing.get()) != 0) {
      fd_.reset();
      return;
    }
    path_ = dev;
  }
  ~TestLoop() {
    if (fd_.valid()) ioctl(fd_.get(), LOOP_CLR_FD, 0);
  }
  const std::string& path() const { return path_; }

 private:
  UniqueFd fd_;
  std::string path_;
};

// ---------------------------------------------------------------------------

TEST(Environment, DeviceMapperPresent) {
  if (!IsRoot()) GTEST_SKIP() << "needs root";
  ASSERT_TRUE(DeviceMapperAvailable())
      << "device-mapper not available in this kernel: run this binary in "
         "the test VM (tests/vm/run.sh -- "
      << "vcrypt_dm_tests)";
}

// On a kernel without device-mapper every dm operation says so, with the
// documented message; skipped where dm exists (the VM).
TEST(Environment, NoDeviceMapperIsReported) {
  if (!IsRoot()) GTEST_SKIP() << "needs root";
  if (DeviceMapperAvailable()) GTEST_SKIP() << "device-mapper is available";
  const std::string prefix = "device-mapper not available in this kernel";
  SecureBuffer dek = NewDek();
  ActivateParams p;
  p.device = "/nonexistent";
  p.name = MappingPrefix() + "nodm";
  auto a = Activate(p, dek);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().code, ErrorCode::kNoDeviceMapper);
  EXPECT_EQ(a.error().message.rfind(prefix, 0), 0u) << a.error().message;
  auto q = QueryMapping(p.name);
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.error().code, ErrorCode::kNoDeviceMapper);
  auto l = ListMappings("");
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.error().code, ErrorCode::kNoDeviceMapper);
  auto f = FindMappingByUuid("0b5c6f7e-6d3a-4c1e-9e7f-2a1b3c4d5e6f");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code, ErrorCode::kNoDeviceMapper);
  Status d = Deactivate(p.name);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().code, ErrorCode::kNoDeviceMapper);
  EXPECT_EQ(d.error().message.rfind(prefix, 0), 0u);
}

// Format/header tests: root (libcryptsetup's metadata locks live in /run),
// no device-mapper needed.
class VolumeFormatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!IsRoot()) GTEST_SKIP() << "needs root";
    ASSERT_FALSE(dir_.path().empty());
    file_ = dir_.path() + "/disk.img";
    MakeSparseFile(file_, kFileSize);
  }
  TempDir dir_;
  std::string file_;
};

class VolumeFormatSectorTest : public VolumeFormatTest,
                               public ::testing::WithParamInterface<uint32_t> {
};

TEST_P(VolumeFormatSectorTest, FormatThenReadHeader) {
  SecureBuffer dek = NewDek();
  auto uuid = Format(file_, dek, GetParam(), false, "web-01/disk0");
  ASSERT_TRUE(uuid.ok()) << uuid.error().message;
  auto h = ReadHeader(file_);
  ASSERT_TRUE(h.ok()) << h.error().message;
  EXPECT_EQ(h->uuid, *uuid);
  EXPECT_EQ(h->device, file_);
  EXPECT_EQ(h->cipher, "aes-xts-plain64");
  EXPECT_EQ(h->key_bits, 512u);
  EXPECT_EQ(h->sector_size, GetParam());
  EXPECT_EQ(h->subsystem, "vcrypt");
  EXPECT_EQ(h->label, "web-01/disk0");
  EXPECT_EQ(h->active_keyslots, 0);
  EXPECT_EQ(h->data_offset, kLuks2HeaderSize);
  ASSERT_TRUE(h->token_json.has_value());
  EXPECT_GE(h->token_id, 0);
  auto t = VcryptToken::Parse(*h->token_json);
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(t->vm, "vm1");
  EXPECT_EQ(t->provider_type, "native");
  // The header's file size is unchanged (format does not grow a file).
  EXPECT_EQ(fs::file_size(file_), kFileSize);
}

INSTANTIATE_TEST_SUITE_P(Sectors, VolumeFormatSectorTest,
                         ::testing::Values(4096u, 512u));

TEST_F(VolumeFormatTest, RefusesExistingLuks2UnlessForced) {
  SecureBuffer dek = NewDek();
  auto first = Format(file_, dek);
  ASSERT_TRUE(first.ok()) << first.error().message;
  auto again = Format(file_, dek);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kExists);
  EXPECT_NE(again.error().message.find("LUKS"), std::string::npos)
      << again.error().message;
  EXPECT_NE(again.error().message.find(*first), std::string::npos)
      << again.error().message;
  auto h = ReadHeader(file_);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->uuid, *first);  // untouched

  auto forced = Format(file_, dek, 4096, /*force=*/true);
  ASSERT_TRUE(forced.ok()) << forced.error().message;
  EXPECT_NE(*forced, *first);
}

TEST_F(VolumeFormatTest, RefusesLuks1UnlessForced) {
  // A LUKS1 header made with libcryptsetup directly (no keyslot needed).
  {
    crypt_device* raw = nullptr;
    ASSERT_EQ(crypt_init(&raw, file_.c_str()), 0);
    CryptDevicePtr cd(raw);
    SecureBuffer vk = NewDek();
    struct crypt_pbkdf_type fast = {};
    fast.type = CRYPT_KDF_PBKDF2;
    fast.hash = "sha256";
    fast.iterations = 1000;
    fast.flags = CRYPT_PBKDF_NO_BENCHMARK;
    ASSERT_EQ(crypt_set_pbkdf_type(cd.get(), &fast), 0);
    ASSERT_EQ(crypt_format(cd.get(), CRYPT_LUKS1, "aes", "xts-plain64", nullptr,
                           vk.chars(), vk.size(), nullptr),
              0);
  }
  auto h = ReadHeader(file_);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().code, ErrorCode::kInvalidVolume);
  EXPECT_NE(h.error().message.find("LUKS1"), std::string::npos)
      << h.error().message;

  SecureBuffer dek = NewDek();
  auto r = Format(file_, dek);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kExists);
  EXPECT_TRUE(Format(file_, dek, 4096, true).ok());
}

TEST_F(VolumeFormatTest, RefusesExt4UnlessForced) {
  std::string cmd = "mkfs.ext4 -q -F " + file_ + " >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "mkfs.ext4 failed";
  auto before = ReadAll(file_);
  SecureBuffer dek = NewDek();
  auto r = Format(file_, dek);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kExists);
  EXPECT_NE(r.error().message.find("ext4"), std::string::npos)
      << r.error().message;
  EXPECT_TRUE(ReadAll(file_) == before) << "a refused format changed data";

  auto forced = Format(file_, dek, 4096, true);
  ASSERT_TRUE(forced.ok()) << forced.error().message;
  auto h = ReadHeader(file_);
  ASSERT_TRUE(h.ok()) << h.error().message;
  EXPECT_EQ(h->uuid, *forced);
}

TEST_F(VolumeFormatTest, RefusesPartitionTableUnlessForced) {
  // A minimal MBR with one partition entry: libblkid reports PTTYPE=dos.
  std::vector<uint8_t> mbr(512, 0);
  mbr[446 + 4] = 0x83;  // partition type: Linux
  mbr[446 + 8] = 0x00;  // first LBA 2048 (little endian)
  mbr[446 + 9] = 0x08;
  mbr[446 + 12] = 0x00;  // 4096 sectors
  mbr[446 + 13] = 0x10;
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  WriteAt(file_, 0, mbr);
  SecureBuffer dek = NewDek();
  auto r = Format(file_, dek);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kExists);
  EXPECT_NE(r.error().message.find("partition table"), std::string::npos)
      << r.error().message;
}

TEST_F(VolumeFormatTest, TooSmallLeavesFileUnchanged) {
  std::string small = dir_.path() + "/small.img";
  {
    std::ofstream out(small, std::ios::binary);
    auto data = Pattern(kMinVolumeSize - 4096, 7);
    out.write(reinterpret_cast<const char*>(data.data()),
              static_cast<std::streamsize>(data.size()));
  }
  auto before = ReadAll(small);
  SecureBuffer dek = NewDek();
  auto r = Format(small, dek, 4096, /*force=*/true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("at least 17 MiB"), std::string::npos)
      << r.error().message;
  EXPECT_TRUE(ReadAll(small) == before);
  // Exactly the minimum works.
  std::string min = dir_.path() + "/min.img";
  MakeSparseFile(min, kMinVolumeSize);
  auto ok = Format(min, dek);
  EXPECT_TRUE(ok.ok()) << ok.error().message;
}

TEST_F(VolumeFormatTest, NotFound) {
  SecureBuffer dek = NewDek();
  std::string missing = dir_.path() + "/no-such-file";
  auto r = Format(missing, dek);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_FALSE(fs::exists(missing));
  auto h = ReadHeader(missing);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(
      WriteToken(missing, MakeTokenJson("0b5c6f7e-6d3a-4c1e-9e7f-2a1b3c4d5e6f",
                                        "vm1", "disk0"))
          .error()
          .code,
      ErrorCode::kNotFound);
}

TEST_F(VolumeFormatTest, BadArguments) {
  SecureBuffer dek = NewDek();
  auto r = Format(file_, dek, 1024);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  SecureBuffer short_dek(32);
  r = Format(file_, short_dek);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  r = Format(file_, dek, 4096, false, std::string(48, 'l'));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  // Size not a multiple of 4096 (but of 512).
  std::string odd = dir_.path() + "/odd.img";
  MakeSparseFile(odd, kFileSize + 512);
  r = Format(odd, dek, 4096);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Format(odd, dek, 512).ok());
  // A directory is neither a device nor a file.
  r = Format(dir_.path(), dek);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  // Nothing was written by any refused call.
  auto sig = ReadHeader(file_);
  EXPECT_FALSE(sig.ok());
}

TEST_F(VolumeFormatTest, FailingTokenMakerWipesHeader) {
  SecureBuffer dek = NewDek();
  FormatParams p;
  p.device = file_;
  p.label = "vm1/disk0";
  std::string seen_uuid;
  auto r = FormatVolume(p, dek, [&](const std::string& uuid) {
    seen_uuid = uuid;
    return Result<std::string>(
        MakeError(ErrorCode::kKeyUnavailable, "provider unreachable"));
  });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_EQ(r.error().message, "provider unreachable");
  EXPECT_EQ(seen_uuid.size(), 36u);
  auto h = ReadHeader(file_);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().code, ErrorCode::kInvalidVolume);
  auto head = ReadAt(file_, 0, kLuks2HeaderSize);
  EXPECT_TRUE(std::all_of(head.begin(), head.end(), [](uint8_t b) {
    return b == 0;
  })) << "header area not wiped";
  // The device can be formatted again without force: no signature left.
  EXPECT_TRUE(Format(file_, dek).ok());
}

TEST_F(VolumeFormatTest, InvalidTokenJsonWipesHeader) {
  SecureBuffer dek = NewDek();
  FormatParams p;
  p.device = file_;
  p.label = "vm1/disk0";
  for (std::string bad :
       {std::string("{\"type\":\"vcrypt\",\"keyslots\":[]}"),
        std::string("not json"), std::string(kMaxTokenSize + 1, ' ')}) {
    auto r = FormatVolume(
        p, dek, [&](const std::string&) { return Result<std::string>(bad); });
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << r.error().message;
    EXPECT_FALSE(ReadHeader(file_).ok());
  }
}

TEST_F(VolumeFormatTest, WriteTokenReplacesTheToken) {
  SecureBuffer dek = NewDek();
  auto uuid = Format(file_, dek);
  ASSERT_TRUE(uuid.ok()) << uuid.error().message;
  auto h1 = ReadHeader(file_);
  ASSERT_TRUE(h1.ok());
  std::string replacement = MakeTokenJson(*uuid, "vm1", "disk0", "kek-2");
  Status st = WriteToken(file_, replacement);
  ASSERT_TRUE(st.ok()) << st.error().message;
  auto h2 = ReadHeader(file_);
  ASSERT_TRUE(h2.ok()) << h2.error().message;
  EXPECT_EQ(h2->token_id, h1->token_id);
  ASSERT_TRUE(h2->token_json.has_value());
  auto t = VcryptToken::Parse(*h2->token_json);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->kek.kek_id, "kek-2");
  EXPECT_EQ(h2->uuid, *uuid);
  EXPECT_EQ(h2->active_keyslots, 0);

  // Invalid tokens are refused and leave the header alone.
  st = WriteToken(file_, "{\"type\":\"vcrypt\"}");
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  auto h3 = ReadHeader(file_);
  ASSERT_TRUE(h3.ok());
  EXPECT_EQ(*h3->token_json, *h2->token_json);
}

TEST_F(VolumeFormatTest, WriteTokenOnNonLuksIsInvalidVolume) {
  Status st = WriteToken(
      file_, MakeTokenJson("0b5c6f7e-6d3a-4c1e-9e7f-2a1b3c4d5e6f", "a", "b"));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidVolume);
  EXPECT_EQ(fs::file_size(file_), kFileSize);
}

// ---------------------------------------------------------------------------
// Tests against the live device-mapper.

class DmTest : public VolumeFormatTest {
 protected:
  void SetUp() override {
    VolumeFormatTest::SetUp();
    if (IsSkipped()) return;
    ASSERT_TRUE(DeviceMapperAvailable())
        << "device-mapper not available in this kernel: these tests must "
           "run in the test VM (tests/vm/run.sh -- vcrypt_dm_tests)";
  }
  void TearDown() override {
    if (!IsRoot() || !DeviceMapperAvailable()) return;
    // A failed test must not leave mappings that break the next one.
    auto left = ListMappings(MappingPrefix());
    if (left.ok()) {
      for (const auto& m : *left) {
        ADD_FAILURE() << "mapping left behind: " << m.name;
        if (!Deactivate(m.name).ok()) RemoveDm(m.name);
      }
    }
  }
  std::string Name(const std::string& suffix) {
    return MappingPrefix() + suffix;
  }
  Result<std::string> Open(const std::string& device, const std::string& name,
                           const SecureBuffer& dek,
                           std::optional<bool> bypass = false,
                           bool discards = false) {
    ActivateParams p;
    p.device = device;
    p.name = name;
    p.bypass_workqueues = bypass;
    p.discards = discards;
    return Activate(p, dek);
  }
};

class DmSectorTest : public DmTest,
                     public ::testing::WithParamInterface<uint32_t> {};

TEST_P(DmSectorTest, FormatActivateWriteReadDeactivate) {
  const uint32_t sector = GetParam();
  SecureBuffer dek = NewDek();
  auto uuid = Format(file_, dek, sector);
  ASSERT_TRUE(uuid.ok()) << uuid.error().message;
  const std::string name = Name("rw");

  auto path = Open(file_, name, dek);
  ASSERT_TRUE(path.ok()) << path.error().message;
  EXPECT_EQ(*path, "/dev/mapper/" + name);
  struct stat st;
  ASSERT_EQ(stat(path->c_str(), &st), 0) << *path << " does not exist";
  EXPECT_TRUE(S_ISBLK(st.st_mode));

  auto m = QueryMapping(name);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->name, name);
  EXPECT_EQ(m->path, *path);
  EXPECT_EQ(m->luks_uuid, *uuid);
  EXPECT_EQ(m->dm_uuid.rfind("CRYPT-LUKS2-", 0), 0u) << m->dm_uuid;
  EXPECT_EQ(m->target, "crypt");
  EXPECT_EQ(m->target_count, 1);
  EXPECT_EQ(m->cipher, "aes-xts-plain64");
  EXPECT_EQ(m->key_bits, 512u);
  EXPECT_FALSE(m->key_in_keyring);
  EXPECT_EQ(m->open_count, 0);
  EXPECT_FALSE(m->suspended);
  EXPECT_EQ(m->size_bytes, kFileSize - kLuks2HeaderSize);
  EXPECT_EQ(m->backing.rfind("/dev/loop", 0), 0u) << m->backing;
  EXPECT_EQ(m->backing_file, fs::canonical(file_).string());
  if (sector == 4096) {
    EXPECT_TRUE(HasOption(*m, "sector_size:4096"));
  } else {
    EXPECT_FALSE(HasOption(*m, "sector_size:4096"));
  }
  EXPECT_FALSE(HasOption(*m, "allow_discards"));
  EXPECT_FALSE(HasOption(*m, "no_read_workqueue"));

  // `dmsetup table --showkeys`: crypt, aes-xts-plain64, 512-bit hex key.
  TableKeyCheck key = CheckTableKey(name);
  ASSERT_TRUE(key.found);
  EXPECT_EQ(key.cipher, "aes-xts-plain64");
  EXPECT_EQ(key.key_len, 128u);
  EXPECT_TRUE(key.key_all_hex);

  // Write through the mapping; the backing file holds ciphertext.
  const uint64_t off = 3 * kMiB;
  auto plain = Pattern(64 * 1024, 42);
  WriteAt(*path, off, plain);
  EXPECT_TRUE(ReadAt(*path, off, plain.size()) == plain);
  EXPECT_FALSE(ReadAt(file_, kLuks2HeaderSize + off, plain.size()) == plain)
      << "plaintext found in the backing file";

  Status closed = Deactivate(name);
  ASSERT_TRUE(closed.ok()) << closed.error().message;
  EXPECT_FALSE(fs::exists(*path));
  auto gone = QueryMapping(name);
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(LoopsBacking(file_).empty()) << "loop device left behind";

  // Reopen: the data decrypts from disk with the same DEK.
  path = Open(file_, name, dek);
  ASSERT_TRUE(path.ok()) << path.error().message;
  EXPECT_TRUE(ReadAt(*path, off, plain.size()) == plain);
  ASSERT_TRUE(Deactivate(name).ok());
  EXPECT_TRUE(LoopsBacking(file_).empty());
}

INSTANTIATE_TEST_SUITE_P(Sectors, DmSectorTest, ::testing::Values(4096u, 512u));

TEST_F(DmTest, WrongDekIsCryptoErrorAndLeavesNothing) {
  SecureBuffer dek = NewDek();
  ASSERT_TRUE(Format(file_, dek).ok());
  SecureBuffer wrong = NewDek();
  const std::string name = Name("wrong");
  auto r = Open(file_, name, wrong);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto) << r.error().message;
  EXPECT_EQ(QueryMapping(name).error().code, ErrorCode::kNotFound);
  EXPECT_FALSE(fs::exists("/dev/mapper/" + name));
  EXPECT_TRUE(LoopsBacking(file_).empty()) << "loop device left behind";
  // The right key still works afterwards.
  ASSERT_TRUE(Open(file_, name, dek).ok());
  ASSERT_TRUE(Deactivate(name).ok());
}

TEST_F(DmTest, ActivateTwiceIsBusy) {
  SecureBuffer dek = NewDek();
  auto uuid = Format(file_, dek);
  ASSERT_TRUE(uuid.ok());
  const std::string name = Name("a");
  ASSERT_TRUE(Open(file_, name, dek).ok());

  auto same = Open(file_, name, dek);
  ASSERT_FALSE(same.ok());
  EXPECT_EQ(same.error().code, ErrorCode::kBusy);
  EXPECT_NE(same.error().message.find(name), std::string::npos);

  auto other = Open(file_, Name("b"), dek);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().code, ErrorCode::kBusy);
  EXPECT_NE(other.error().message.find("/dev/mapper/" + name),
            std::string::npos)
      << other.error().message;

  auto all = ListMappings(MappingPrefix());
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].name, name);
  EXPECT_EQ(LoopsBacking(file_).size(), 1u);

  auto found = FindMappingByUuid(*uuid);
  ASSERT_TRUE(found.ok()) << found.error().message;
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->name, name);
  // Case and dashes do not matter.
  std::string upper;
  for (char c : *uuid) {
    if (c != '-') upper += static_cast<char>(std::toupper(c));
  }
  auto found2 = FindMappingByUuid(upper);
  ASSERT_TRUE(found2.ok());
  EXPECT_TRUE(found2->has_value());

  ASSERT_TRUE(Deactivate(name).ok());
  auto none = FindMappingByUuid(*uuid);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  EXPECT_EQ(FindMappingByUuid("not-a-uuid").error().code,
            ErrorCode::kInvalidArgument);
}

TEST_F(DmTest, DeactivateWhileOpenIsBusy) {
  SecureBuffer dek = NewDek();
  ASSERT_TRUE(Format(file_, dek).ok());
  const std::string name = Name("held");
  auto path = Open(file_, name, dek);
  ASSERT_TRUE(path.ok());
  {
    UniqueFd holder(open(path->c_str(), O_RDONLY | O_EXCL | O_CLOEXEC));
    ASSERT_TRUE(holder.valid()) << strerror(errno);
    auto m = QueryMapping(name);
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->open_count, 1);
    Status st = Deactivate(name);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().code, ErrorCode::kBusy);
    EXPECT_NE(st.error().message.find("in use (open count 1)"),
              std::string::npos)
        << st.error().message;
    EXPECT_NE(st.error().message.find("stop whatever holds it"),
              std::string::npos);
    EXPECT_TRUE(QueryMapping(name).ok()) << "mapping removed while open";
  }
  Status st = Deactivate(name);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_TRUE(LoopsBacking(file_).empty());
}

TEST_F(DmTest, WorkqueueBypassAndDiscardFlagsInTable) {
  SecureBuffer dek = NewDek();
  ASSERT_TRUE(Format(file_, dek).ok());
  const std::string name = Name("flags");

  ASSERT_TRUE(Open(file_, name, dek, /*bypass=*/true, /*discards=*/true).ok());
  auto m = QueryMapping(name);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(HasOption(*m, "no_read_workqueue"));
  EXPECT_TRUE(HasOption(*m, "no_write_workqueue"));
  EXPECT_TRUE(HasOption(*m, "allow_discards"));
  ASSERT_TRUE(Deactivate(name).ok());

  ASSERT_TRUE(Open(file_, name, dek, /*bypass=*/false, false).ok());
  m = QueryMapping(name);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(HasOption(*m, "no_read_workqueue"));
  EXPECT_FALSE(HasOption(*m, "no_write_workqueue"));
  EXPECT_FALSE(HasOption(*m, "allow_discards"));
  ASSERT_TRUE(Deactivate(name).ok());

  // Automatic mode for a file on tmpfs (/tmp in the VM): rotational-ness
  // cannot be told, so no bypass.
  std::string fstype;
  {
    std::ifstream mounts("/proc/self/mounts");
    std::string dev, mnt, type, rest;
    while (mounts >> dev >> mnt >> type && std::getline(mounts, rest)) {
      if (mnt == "/tmp") fstype = type;
    }
  }
  if (fstype == "tmpfs") {
    ASSERT_TRUE(Open(file_, name, dek, std::nullopt).ok());
    m = QueryMapping(name);
    ASSERT_TRUE(m.ok());
    EXPECT_FALSE(HasOption(*m, "no_read_workqueue"));
    ASSERT_TRUE(Deactivate(name).ok());
  }
}

TEST_F(DmTest, BlockDeviceWithAutomaticBypass) {
  TestLoop loop(file_);
  ASSERT_FALSE(loop.path().empty()) << "cannot attach a loop device";
  SecureBuffer dek = NewDek();
  auto uuid = Format(loop.path(), dek, 512);
  ASSERT_TRUE(uuid.ok()) << uuid.error().message;
  auto h = ReadHeader(loop.path());
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->uuid, *uuid);

  const std::string name = Name("blk");
  ASSERT_TRUE(Open(loop.path(), name, dek, std::nullopt).ok());
  auto m = QueryMapping(name);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->backing, loop.path());
  std::ifstream rot("/sys/block/" + loop.path().substr(5) +
                    "/queue/rotational");
  int rotational = -1;
  rot >> rotational;
  ASSERT_NE(rotational, -1);
  EXPECT_EQ(HasOption(*m, "no_read_workqueue"), rotational == 0);
  EXPECT_EQ(HasOption(*m, "no_write_workqueue"), rotational == 0);

  // Held by the mapping: formatting it again is refused even with force.
  auto busy = Format(loop.path(), dek, 512, /*force=*/true);
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.error().code, ErrorCode::kBusy) << busy.error().message;

  ASSERT_TRUE(Deactivate(name).ok());
}

TEST_F(DmTest, FormatRefusedWhileFileIsMapped) {
  SecureBuffer dek = NewDek();
  ASSERT_TRUE(Format(file_, dek).ok());
  const std::string name = Name("mapped");
  ASSERT_TRUE(Open(file_, name, dek).ok());
  auto r = Format(file_, dek, 4096, /*force=*/true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kBusy) << r.error().message;
  ASSERT_TRUE(Deactivate(name).ok());
}

TEST_F(DmTest, ActivateErrors) {
  SecureBuffer dek = NewDek();
  // Not LUKS.
  auto r = Open(file_, Name("x"), dek);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume) << r.error().message;
  EXPECT_TRUE(LoopsBacking(file_).empty());
  // No such device.
  r = Open(dir_.path() + "/missing", Name("x"), dek);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  // Bad names and key sizes.
  ASSERT_TRUE(Format(file_, dek).ok());
  for (const char* bad : {"", "a/b", "..", "has space"}) {
    r = Open(file_, bad, dek);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << bad;
  }
  SecureBuffer short_dek(32);
  r = Open(file_, Name("x"), short_dek);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(DmTest, QueryAndDeactivateUnknownName) {
  auto m = QueryMapping(Name("nothing"));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, ErrorCode::kNotFound);
  Status st = Deactivate(Name("nothing"));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kNotFound);
  auto l = ListMappings(Name("nothing"));
  ASSERT_TRUE(l.ok());
  EXPECT_TRUE(l->empty());
}

TEST_F(DmTest, DeactivateRefusesNonCryptMappings) {
  // A plain dm-linear mapping, as LVM would make.
  TestLoop loop(file_);
  ASSERT_FALSE(loop.path().empty());
  const std::string name = Name("linear");
  {
    DmTaskPtr dmt(dm_task_create(DM_DEVICE_CREATE));
    ASSERT_TRUE(dmt);
    ASSERT_TRUE(dm_task_set_name(dmt.get(), name.c_str()));
    std::string params = loop.path() + " 0";
    ASSERT_TRUE(
        dm_task_add_target(dmt.get(), 0, 2048, "linear", params.c_str()));
    ASSERT_TRUE(dm_task_run(dmt.get()));
  }
  Status st = Deactivate(name);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  auto m = QueryMapping(name);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->target, "linear");
  EXPECT_TRUE(RemoveDm(name));
}

TEST_F(DmTest, ReadHeaderOfActiveVolume) {
  SecureBuffer dek = NewDek();
  auto uuid = Format(file_, dek);
  ASSERT_TRUE(uuid.ok());
  const std::string name = Name("hdr");
  ASSERT_TRUE(Open(file_, name, dek).ok());
  auto h = ReadHeader(file_);
  ASSERT_TRUE(h.ok()) << h.error().message;
  EXPECT_EQ(h->uuid, *uuid);
  ASSERT_TRUE(Deactivate(name).ok());
}

// vcryptd opens volumes from several threads (open --all, one connection
// per unlock unit at boot). libcryptsetup's dm backend and libdevmapper
// keep process-wide state; without the library lock (dmtools/library.cc) this
// crashed vcryptd. Many threads activate, query and deactivate their own
// file-backed volumes (each with its own loop device) at the same time.
TEST_F(DmTest, ConcurrentActivateAndDeactivateOfDistinctVolumes) {
  constexpr int kThreads = 8;
  constexpr int kRounds = 4;
  std::vector<std::string> files;
  std::vector<SecureBuffer> deks;
  for (int i = 0; i < kThreads; ++i) {
    files.push_back(dir_.path() + "/c" + std::to_string(i) + ".img");
    MakeSparseFile(files.back(), kFileSize);
    deks.push_back(NewDek());
    auto uuid = Format(files.back(), deks.back());
    ASSERT_TRUE(uuid.ok()) << uuid.error().message;
  }
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      const std::string name = Name("c" + std::to_string(i));
      for (int r = 0; r < kRounds && errors[i].empty(); ++r) {
        auto path = Open(files[i], name, deks[i]);
        if (!path.ok()) {
          errors[i] = "activate: " + path.error().message;
          break;
        }
        auto all = ListMappings(MappingPrefix());
        if (!all.ok()) errors[i] = "list: " + all.error().message;
        auto hdr = ReadHeader(files[i]);
        if (!hdr.ok()) errors[i] = "header: " + hdr.error().message;
        Status closed = Deactivate(name);
        if (!closed.ok()) errors[i] = "deactivate: " + closed.error().message;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(errors[i], "") << "thread " << i;
    EXPECT_TRUE(LoopsBacking(files[i]).empty()) << files[i];
  }
}

}  // namespace
}  // namespace vcrypt
