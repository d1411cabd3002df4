// A native provider whose primary key is sealed to the TPM (`provider add
// native --tpm`, keyproviders/native/native_provider.h) against real
// software TPMs (swtpm). Two Swtpm objects are two TPMs (each its own
// owner seed): a provider directory copied from one host to another is the
// directory loaded with the other TPM. "Another host" keeps the same TCTI
// name for its own TPM (device:/dev/tpmrm0); with simulators that name is
// a port, so the copy's config.json is pointed at the second swtpm.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "keyproviders/native/native_provider.h"
#include "tests/test_util.h"
#include "tests/unit/swtpm.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? (st.st_mode & 07777) : 0;
}

SecureBuffer Bytes(std::string_view s) {
  return SecureBuffer::CopyOf(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

// Copies provider directory `from` to `to` as root would (cp -a).
void CopyProviderDir(const std::string& from, const std::string& to) {
  fs::copy(from, to, fs::copy_options::recursive);
  chmod(to.c_str(), 0700);
  for (const auto& e : fs::directory_iterator(to))
    chmod(e.path().c_str(), 0600);
}

// Rewrites one member of DIR/config.json.
void EditConfig(const std::string& dir, const std::string& key,
                const Json& value) {
  Json cfg = Json::parse(ReadAll(dir + "/config.json"));
  cfg[key] = value;
  ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", cfg.dump(2)).ok());
}

class NativeTpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!tpm_.Start(&why)) GTEST_SKIP() << why;
    opts_.allow_test_tcti = true;  // swtpm
  }
  NativeKeyStorage Sealed(const testing::Swtpm& tpm,
                          std::vector<int> pcrs = {}) {
    NativeKeyStorage s;
    s.tpm = true;
    s.tcti = tpm.Tcti();
    s.pcrs = std::move(pcrs);
    return s;
  }
  std::unique_ptr<NativeProvider> MustCreate(const std::string& name,
                                             std::vector<int> pcrs = {}) {
    auto p = NativeProvider::Create(name, dir_ / name,
                                    Sealed(tpm_, std::move(pcrs)), opts_);
    EXPECT_TRUE(p.ok()) << p.error().message;
    return p.ok() ? std::move(p).value() : nullptr;
  }
  Result<std::unique_ptr<NativeProvider>> Load(const std::string& name,
                                               const std::string& dir) {
    return NativeProvider::Load(name, dir, opts_);
  }
  void SetPcr16ToZero() { ASSERT_EQ(tpm_.Tool("tpm2_pcrreset 16"), 0); }
  void ExtendPcr16() {
    ASSERT_EQ(tpm_.Tool("tpm2_pcrextend 16:sha256=" + std::string(64, 'b')), 0);
  }

  testing::Swtpm tpm_;
  testing::TempDir dir_{"native-tpm"};
  NativeProviderOptions opts_;
};

TEST_F(NativeTpmTest, CreateSealsAndLoadGivesTheSameKek) {
  auto p = MustCreate("sealed");
  ASSERT_TRUE(p);
  const std::string d = dir_ / "sealed";
  // Only the sealed object and the config: no key file.
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(d))
    files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"config.json", "primary.sealed"}));
  EXPECT_EQ(ModeOf(d), 0700u);
  EXPECT_EQ(ModeOf(d + "/primary.sealed"), 0600u);
  EXPECT_EQ(ModeOf(d + "/config.json"), 0600u);
  Json cfg = Json::parse(ReadAll(d + "/config.json"));
  EXPECT_EQ(cfg["key_storage"], "tpm");
  EXPECT_EQ(cfg["tcti"], tpm_.Tcti());
  EXPECT_EQ(cfg["pcrs"], Json::array());
  EXPECT_EQ(cfg["key_check"].get<std::string>().size(), 64u);
  Json desc = p->Describe();
  EXPECT_EQ(desc["key_storage"], "tpm");
  EXPECT_EQ(desc["tcti"], tpm_.Tcti());
  EXPECT_EQ(desc["pcrs"], Json::array());

  NewKek k = p->CreateKek("vm1").value();
  auto loaded = Load("sealed", d);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ((*loaded)->primary_key_id(), p->primary_key_id());
  EXPECT_TRUE((*loaded)->key_storage().tpm);
  auto kek = (*loaded)->GetKek(k.ref);
  ASSERT_TRUE(kek.ok()) << kek.error().message;
  EXPECT_TRUE(kek->Equals(k.kek));
}

// The key of a file-backed provider, restored with --tpm: no file of the
// restored provider holds it, nor any 8-byte piece of it.
TEST_F(NativeTpmTest, RestoreSealsAndNoPlaintextKeyIsOnDisk) {
  auto plain = NativeProvider::Create("plain", dir_ / "plain");
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  const std::string key = ReadAll(dir_ / "plain/primary.key");
  ASSERT_EQ(key.size(), 32u);
  NewKek k = (*plain)->CreateKek("vm1").value();
  const SecureBuffer pw = Bytes("pw");
  auto der = (*plain)->BackupBytes(pw, 1000);
  ASSERT_TRUE(der.ok());

  const std::string d = dir_ / "sealed";
  auto r = NativeProvider::RestoreBytes(*der, pw, "sealed", d, "the backup",
                                        Sealed(tpm_, {16}), opts_);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ((*r)->primary_key_id(), (*plain)->primary_key_id());
  EXPECT_FALSE(fs::exists(d + "/primary.key"));
  int scanned = 0;
  for (const auto& e : fs::recursive_directory_iterator(d)) {
    const std::string bytes = ReadAll(e.path().string());
    for (size_t i = 0; i + 8 <= key.size(); ++i)
      EXPECT_EQ(bytes.find(key.substr(i, 8)), std::string::npos)
          << e.path() << " holds bytes " << i << ".. of the primary key";
    ++scanned;
  }
  EXPECT_EQ(scanned, 2);
  auto loaded = Load("sealed", d);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  auto kek = (*loaded)->GetKek(k.ref);
  ASSERT_TRUE(kek.ok()) << kek.error().message;
  EXPECT_TRUE(kek->Equals(k.kek));
  // And it backs up again (that is how the key reaches other hosts).
  EXPECT_TRUE((*loaded)->BackupBytes(pw, 1000).ok());
}

// The provider directory copied to a host with another TPM: it does not
// load there (one clear line, no key), and still does on its own TPM,
// where the KEK wrapped before unwraps the same.
TEST_F(NativeTpmTest, CopiedToAnotherTpmFailsAndTheOriginalStillWorks) {
  testing::Swtpm other;
  std::string why;
  ASSERT_TRUE(other.Start(&why)) << why;
  auto p = MustCreate("sealed", {16});
  ASSERT_TRUE(p);
  NewKek k = p->CreateKek("vm1").value();
  p.reset();

  const std::string copy = dir_ / "host2/sealed";
  fs::create_directories(dir_ / "host2");
  CopyProviderDir(dir_ / "sealed", copy);
  EditConfig(copy, "tcti", other.Tcti());
  auto there = Load("sealed", copy);
  ASSERT_FALSE(there.ok());
  EXPECT_EQ(there.error().code, ErrorCode::kKeyUnavailable);
  const std::string& msg = there.error().message;
  EXPECT_EQ(msg.rfind("provider 'sealed': the primary key is sealed to "
                      "another TPM or its PCR policy no longer matches "
                      "(PCRs 16): ",
                      0),
            0u)
      << msg;
  EXPECT_NE(msg.find("refused to load"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);

  auto here = Load("sealed", dir_ / "sealed");
  ASSERT_TRUE(here.ok()) << here.error().message;
  auto kek = (*here)->GetKek(k.ref);
  ASSERT_TRUE(kek.ok()) << kek.error().message;
  EXPECT_TRUE(kek->Equals(k.kek));
}

// Bound to PCR 16's value at sealing: extended, the key stays sealed;
// back to that value (a reset: PCR 16 is the debug PCR), it loads again.
TEST_F(NativeTpmTest, ChangedPcrKeepsTheKeySealed) {
  SetPcr16ToZero();
  auto p = MustCreate("sealed", {16});
  ASSERT_TRUE(p);
  const std::string d = dir_ / "sealed";
  ASSERT_TRUE(Load("sealed", d).ok());
  ExtendPcr16();
  auto r = Load("sealed", d);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(r.error().message.find("its PCR policy no longer matches (PCRs "
                                   "16)"),
            std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("refused to unseal"), std::string::npos)
      << r.error().message;
  SetPcr16ToZero();
  auto again = Load("sealed", d);
  EXPECT_TRUE(again.ok()) << again.error().message;
}

// Each change to primary.sealed or config.json is refused; undone, the
// provider loads again (so it is the change that is refused).
TEST_F(NativeTpmTest, TamperedFilesAreRefused) {
  auto p = MustCreate("sealed", {16});
  auto other = MustCreate("other");
  ASSERT_TRUE(p && other);
  const std::string d = dir_ / "sealed";
  const std::string sealed = ReadAll(d + "/primary.sealed");
  const std::string config = ReadAll(d + "/config.json");
  auto restore = [&] {
    WriteAll(d + "/primary.sealed", sealed);
    WriteAll(d + "/config.json", config);
    chmod((d + "/primary.sealed").c_str(), 0600);
    auto ok = Load("sealed", d);
    ASSERT_TRUE(ok.ok()) << ok.error().message;
  };
  auto refused = [&](const std::string& what) -> Error {
    auto r = Load("sealed", d);
    EXPECT_FALSE(r.ok()) << what << " was not refused";
    if (r.ok()) return Error{};
    EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << what;
    return r.error();
  };

  // primary.sealed: bits flipped (public area, private area), cut short,
  // another provider's sealed key, a symlink, a loose mode, missing.
  for (size_t i :
       {size_t{10}, size_t{40}, sealed.size() / 2, sealed.size() - 3}) {
    std::string bad = sealed;
    bad[i] ^= 0x10;
    WriteAll(d + "/primary.sealed", bad);
    refused("a flipped byte " + std::to_string(i));
    restore();
  }
  WriteAll(d + "/primary.sealed", sealed.substr(0, sealed.size() - 1));
  EXPECT_EQ(refused("a cut blob").code, ErrorCode::kInvalidArgument);
  restore();
  WriteAll(d + "/primary.sealed", ReadAll(dir_ / "other/primary.sealed"));
  EXPECT_EQ(refused("another provider's blob").code,
            ErrorCode::kInvalidArgument);
  restore();
  fs::remove(d + "/primary.sealed");
  fs::create_symlink(dir_ / "other/primary.sealed", d + "/primary.sealed");
  EXPECT_EQ(refused("a symlink").code, ErrorCode::kInvalidArgument);
  fs::remove(d + "/primary.sealed");
  EXPECT_EQ(refused("no primary.sealed").code, ErrorCode::kNotFound);
  restore();
  chmod((d + "/primary.sealed").c_str(), 0644);
  EXPECT_EQ(refused("mode 0644").code, ErrorCode::kInvalidArgument);
  restore();

  // config.json: the PCRs (other ones; none), the key check, the key ID
  // (then the key check no longer matches), the storage, the TCTI.
  EditConfig(d, "pcrs", Json::array({23}));
  EXPECT_EQ(refused("other PCRs").code, ErrorCode::kKeyUnavailable);
  restore();
  EditConfig(d, "pcrs", Json::array());
  EXPECT_EQ(refused("no PCRs").code, ErrorCode::kInvalidArgument);
  restore();
  EditConfig(d, "pcrs", Json::array({16, 16}));
  EXPECT_EQ(refused("repeated PCRs").code, ErrorCode::kInvalidArgument);
  restore();
  EditConfig(d, "key_check", std::string(64, '0'));
  EXPECT_EQ(refused("another key check").code, ErrorCode::kInvalidArgument);
  restore();
  EditConfig(d, "primary_key_id", other->primary_key_id());
  EXPECT_EQ(refused("another key ID").code, ErrorCode::kInvalidArgument);
  restore();
  EditConfig(d, "key_storage", "file");
  EXPECT_EQ(refused("file storage").code, ErrorCode::kNotFound);
  restore();
  EditConfig(d, "key_storage", "tpm2");
  EXPECT_EQ(refused("unknown storage").code, ErrorCode::kInvalidArgument);
  restore();
}

// The TCTI in config.json decides which library tpm2-tss loads: anything
// but a TPM device node (or, where allowed, a simulator) is refused before
// anything is loaded.
TEST_F(NativeTpmTest, ConfiguredTctiIsAllowlisted) {
  auto p = MustCreate("sealed");
  ASSERT_TRUE(p);
  const std::string d = dir_ / "sealed";
  const std::string canary = dir_ / "canary";
  ASSERT_EQ(setenv("VCRYPT_TCTI_CANARY", canary.c_str(), 1), 0);
  const std::string so = VCRYPT_TCTI_CANARY_SO;
  for (const std::string& tcti :
       {so, so + ":x", "device:" + so, std::string("device:/dev/sda"),
        std::string("tabrmd:bus_name=x"), std::string("cmd:tpm2_startup")}) {
    EditConfig(d, "tcti", tcti);
    auto r = Load("sealed", d);
    ASSERT_FALSE(r.ok()) << tcti;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << tcti;
  }
  unsetenv("VCRYPT_TCTI_CANARY");
  EXPECT_FALSE(fs::exists(canary)) << "the canary TCTI was loaded";
  // A simulator only where the options allow it.
  EditConfig(d, "tcti", tpm_.Tcti());
  EXPECT_TRUE(Load("sealed", d).ok());
  auto strict = NativeProvider::Load("sealed", d, NativeProviderOptions{});
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.error().code, ErrorCode::kInvalidArgument);
}

// A failed create or restore leaves no directory behind.
TEST_F(NativeTpmTest, FailedCreateLeavesNothing) {
  NativeKeyStorage down = Sealed(tpm_);
  down.tcti = "swtpm:host=127.0.0.1,port=9";  // nothing listens there
  auto r = NativeProvider::Create("p", dir_ / "p", down, opts_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kIo) << r.error().message;
  EXPECT_NE(r.error().message.find("cannot seal"), std::string::npos)
      << r.error().message;
  EXPECT_FALSE(fs::exists(dir_ / "p"));

  struct Case {
    NativeKeyStorage storage;
    NativeProviderOptions options;
  };
  NativeKeyStorage bad_pcr = Sealed(tpm_, {24});
  NativeKeyStorage bad_tcti = Sealed(tpm_);
  bad_tcti.tcti = "device:/dev/sda";
  NativeKeyStorage pcrs_without_tpm;
  pcrs_without_tpm.pcrs = {7};
  for (const Case& c : {Case{bad_pcr, opts_}, Case{bad_tcti, opts_},
                        Case{Sealed(tpm_), NativeProviderOptions{}},
                        Case{pcrs_without_tpm, opts_}}) {
    auto f = NativeProvider::Create("p", dir_ / "p", c.storage, c.options);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.error().code, ErrorCode::kInvalidArgument) << f.error().message;
    EXPECT_FALSE(fs::exists(dir_ / "p"));
  }

  auto plain = NativeProvider::Create("plain", dir_ / "plain");
  ASSERT_TRUE(plain.ok());
  const SecureBuffer pw = Bytes("pw");
  auto der = (*plain)->BackupBytes(pw, 1000);
  ASSERT_TRUE(der.ok());
  auto rr = NativeProvider::RestoreBytes(*der, pw, "p", dir_ / "p",
                                         "the backup", down, opts_);
  ASSERT_FALSE(rr.ok());
  EXPECT_EQ(rr.error().code, ErrorCode::kIo);
  EXPECT_FALSE(fs::exists(dir_ / "p"));
}

}  // namespace
}  // namespace vcrypt
