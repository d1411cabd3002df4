// `vcryptctl probe` (cli/probe.h): what udev imports for a block device.
// The header tests format LUKS volumes on sparse files through
// libcryptsetup (no device-mapper needed) and so need root; without root
// they are skipped. The rest runs anywhere.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <libcryptsetup.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "cli/probe.h"
#include "common/aead.h"
#include "common/handles.h"
#include "common/random.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"
#include "tests/test_util.h"
#include "tests/unit/cli_run.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kFileSize = 40ull << 20;

// vcryptctl with a socket that does not exist: probe must not need it.
using testing::CliRun;
using testing::RunCtl;
int Lines(const std::string& s) { return testing::CountLines(s); }

struct TempDir : testing::TempDir {
  TempDir() : testing::TempDir("probetest") {}
};

void MakeFile(const std::string& path, uint64_t size, bool garbage = false) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid()) << path << ": " << strerror(errno);
  ASSERT_EQ(ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  if (garbage) {
    std::vector<uint8_t> buf(1 << 20);
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(i * 131 + 7);
    ASSERT_EQ(pwrite(fd.get(), buf.data(), buf.size(), 0), static_cast<ssize_t>(buf.size()));
  }
}

std::string TokenJson(const std::string& uuid, const std::string& vm, const std::string& disk,
                      const std::string& provider, const std::string& type) {
  VcryptToken t;
  t.vm = vm;
  t.disk = disk;
  t.provider_name = provider;
  t.provider_type = type;
  t.kek.kek_id = type == "native" ? "0b6f0d6e-6b8e-4a43-9a7e-3f2b1c0d9e8f" : "4711";
  auto kek = RandomKey(kAeadKeySize);
  auto dek = RandomKey(kDekSize);
  EXPECT_TRUE(kek.ok() && dek.ok());
  auto w = WrapKey(*kek, *dek, DekAad(uuid, t.kek.kek_id, t.provider_name));
  EXPECT_TRUE(w.ok());
  t.dek = std::move(w).value();
  return t.ToJsonString();
}

// A vcrypt volume on a sparse file; returns its LUKS2 UUID.
std::string MakeVcryptVolume(const std::string& path, const std::string& vm,
                             const std::string& disk, const std::string& provider = "local",
                             const std::string& type = "native") {
  MakeFile(path, kFileSize);
  auto dek = RandomKey(kDekSize);
  EXPECT_TRUE(dek.ok());
  FormatParams p;
  p.device = path;
  p.label = vm + "/" + disk;
  auto uuid = FormatVolume(p, *dek, [&](const std::string& u) {
    return Result<std::string>(TokenJson(u, vm, disk, provider, type));
  });
  EXPECT_TRUE(uuid.ok()) << (uuid.ok() ? "" : uuid.error().message);
  return uuid.ok() ? *uuid : "";
}

struct CryptFree {
  void operator()(crypt_device* cd) const { crypt_free(cd); }
};
using Crypt = std::unique_ptr<crypt_device, CryptFree>;

Crypt InitCd(const std::string& path) {
  crypt_device* cd = nullptr;
  EXPECT_EQ(crypt_init(&cd, path.c_str()), 0) << path;
  return Crypt(cd);
}

// A LUKS volume as `cryptsetup luksFormat` makes it: one passphrase
// keyslot, no token (cheap PBKDF so the test stays fast).
void MakePlainLuks(const std::string& path, const char* type) {
  MakeFile(path, kFileSize);
  Crypt cd = InitCd(path);
  ASSERT_TRUE(cd);
  crypt_pbkdf_type pbkdf{};
  pbkdf.type = CRYPT_KDF_PBKDF2;
  pbkdf.hash = "sha256";
  pbkdf.iterations = 1000;
  pbkdf.flags = CRYPT_PBKDF_NO_BENCHMARK;
  ASSERT_EQ(crypt_set_pbkdf_type(cd.get(), &pbkdf), 0);
  ASSERT_EQ(crypt_format(cd.get(), type, "aes", "xts-plain64", nullptr, nullptr, 64, nullptr), 0);
  ASSERT_GE(crypt_keyslot_add_by_volume_key(cd.get(), CRYPT_ANY_SLOT, nullptr, 0, "pw", 2), 0);
}

// Replaces token `id` of the LUKS2 volume at `path` with `json` as is
// (bypassing vcrypt's own checks, as a crafted header would).
void SetRawToken(const std::string& path, int id, const std::string& json) {
  Crypt cd = InitCd(path);
  ASSERT_TRUE(cd);
  ASSERT_EQ(crypt_load(cd.get(), CRYPT_LUKS2, nullptr), 0);
  ASSERT_GE(crypt_token_json_set(cd.get(), id, json.c_str()), 0) << json;
}

std::string RawToken(const std::string& path) {
  Crypt cd = InitCd(path);
  EXPECT_EQ(crypt_load(cd.get(), CRYPT_LUKS2, nullptr), 0);
  const char* json = nullptr;
  EXPECT_EQ(crypt_token_json_get(cd.get(), 0, &json), 0);
  return json ? json : "";
}

class ProbeHeaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "formatting LUKS volumes needs root";
  }
  TempDir dir_;
};

// --- no root needed ---------------------------------------------------------

TEST(ProbeTest, UnitInstanceIsMappingNameWithoutPrefixAndSplitsAtLastDash) {
  EXPECT_EQ(UnlockUnitInstance("web01", "root"), "web01-root");
  EXPECT_EQ(UnlockUnitInstance("db.prod_2", "data.1"), "db.prod_2-data.1");
  std::string inst = UnlockUnitInstance("my-web-vm", "d0");
  EXPECT_EQ(inst, "my-web-vm-d0");
  // Disk names have no '-': the last '-' separates VM and disk.
  EXPECT_EQ(inst.substr(0, inst.rfind('-')), "my-web-vm");
  EXPECT_EQ(inst.substr(inst.rfind('-') + 1), "d0");
}

TEST(ProbeTest, NetworkProviders) {
  EXPECT_FALSE(ProviderNeedsNetwork("native"));
  EXPECT_TRUE(ProviderNeedsNetwork("standard"));
  EXPECT_TRUE(ProviderNeedsNetwork("trusted"));
  EXPECT_FALSE(ProviderNeedsNetwork(""));
}

TEST(ProbeTest, FormatIsKeyValueLinesInFixedOrder) {
  ProbeInfo i;
  i.vm = "my-vm";
  i.disk = "root";
  i.uuid = "0b6f0d6e-6b8e-4a43-9a7e-3f2b1c0d9e8f";
  i.provider = "kms";
  i.provider_type = "standard";
  i.needs_network = true;
  i.unit_instance = "my-vm-root";
  EXPECT_EQ(FormatProbe(i),
            "VCRYPT_VOLUME=1\n"
            "VCRYPT_VM=my-vm\n"
            "VCRYPT_DISK=root\n"
            "VCRYPT_UUID=0b6f0d6e-6b8e-4a43-9a7e-3f2b1c0d9e8f\n"
            "VCRYPT_PROVIDER=kms\n"
            "VCRYPT_PROVIDER_TYPE=standard\n"
            "VCRYPT_NEEDS_NETWORK=1\n"
            "VCRYPT_UNIT=my-vm-root\n");
}

TEST(ProbeTest, MissingDeviceIsNotFound) {
  auto r = ProbeDevice("/nonexistent/vcrypt-probe-disk");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  CliRun c = RunCtl({"probe", "/nonexistent/vcrypt-probe-disk"});
  EXPECT_EQ(c.code, 5);
  EXPECT_EQ(c.out, "");
  EXPECT_EQ(Lines(c.err), 1) << c.err;
}

TEST(ProbeTest, NeitherBlockDeviceNorFileIsInvalidVolume) {
  for (const char* p : {"/dev/null", "/tmp"}) {
    auto r = ProbeDevice(p);
    ASSERT_FALSE(r.ok()) << p;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume) << p << ": " << r.error().message;
    CliRun c = RunCtl({"probe", p});
    EXPECT_EQ(c.code, 9) << p;
    EXPECT_EQ(c.out, "") << p;
  }
}

TEST(ProbeTest, UsageErrors) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"probe"}, {"probe", "/dev/a", "/dev/b"}, {"probe", "--bogus", "/dev/a"}}) {
    CliRun c = RunCtl(args);
    EXPECT_EQ(c.code, 2) << args.size();
    EXPECT_EQ(c.out, "");
    EXPECT_EQ(Lines(c.err), 1) << c.err;
  }
}

// --- LUKS headers on files (root) -------------------------------------------

TEST_F(ProbeHeaderTest, GarbageZerosAndTinyFilesAreNotVolumes) {
  MakeFile(dir_ / "zeros", kFileSize);
  MakeFile(dir_ / "garbage", kFileSize, true);
  MakeFile(dir_ / "empty", 0);
  for (const char* n : {"zeros", "garbage", "empty"}) {
    auto r = ProbeDevice(dir_ / n);
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume) << n << ": " << r.error().message;
    CliRun c = RunCtl({"probe", dir_ / n});
    EXPECT_EQ(c.code, 9) << n;
    EXPECT_EQ(c.out, "") << n;
    EXPECT_EQ(Lines(c.err), 1) << c.err;
  }
}

TEST_F(ProbeHeaderTest, NativeVolume) {
  std::string uuid = MakeVcryptVolume(dir_ / "v.img", "web-01", "root");
  ASSERT_FALSE(uuid.empty());
  auto r = ProbeDevice(dir_ / "v.img");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->vm, "web-01");
  EXPECT_EQ(r->disk, "root");
  EXPECT_EQ(r->uuid, uuid);
  EXPECT_EQ(r->provider, "local");
  EXPECT_EQ(r->provider_type, "native");
  EXPECT_FALSE(r->needs_network);
  EXPECT_EQ(r->unit_instance, "web-01-root");

  CliRun c = RunCtl({"probe", dir_ / "v.img"});
  EXPECT_EQ(c.code, 0) << c.err;
  EXPECT_EQ(c.err, "");
  EXPECT_EQ(c.out, "VCRYPT_VOLUME=1\nVCRYPT_VM=web-01\nVCRYPT_DISK=root\nVCRYPT_UUID=" + uuid +
                       "\nVCRYPT_PROVIDER=local\nVCRYPT_PROVIDER_TYPE=native\n"
                       "VCRYPT_NEEDS_NETWORK=0\nVCRYPT_UNIT=web-01-root\n");
}

TEST_F(ProbeHeaderTest, StandardAndTrustedVolumesNeedTheNetwork) {
  for (const char* type : {"standard", "trusted"}) {
    std::string img = dir_ / (std::string(type) + ".img");
    ASSERT_FALSE(MakeVcryptVolume(img, "db", "data", "kms1", type).empty());
    auto r = ProbeDevice(img);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->provider, "kms1");
    EXPECT_EQ(r->provider_type, type);
    EXPECT_TRUE(r->needs_network) << type;
    CliRun c = RunCtl({"probe", img});
    EXPECT_NE(c.out.find("\nVCRYPT_NEEDS_NETWORK=1\n"), std::string::npos) << c.out;
  }
}

TEST_F(ProbeHeaderTest, PlainLuksIsNotAVcryptVolume) {
  MakePlainLuks(dir_ / "luks2.img", CRYPT_LUKS2);
  MakePlainLuks(dir_ / "luks1.img", CRYPT_LUKS1);
  for (const char* n : {"luks2.img", "luks1.img"}) {
    auto r = ProbeDevice(dir_ / n);
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume) << n << ": " << r.error().message;
    CliRun c = RunCtl({"probe", dir_ / n});
    EXPECT_EQ(c.code, 9) << n;
    EXPECT_EQ(c.out, "") << n;
  }
}

TEST_F(ProbeHeaderTest, CraftedTokensCannotInjectIntoUdev) {
  std::string img = dir_ / "v.img";
  ASSERT_FALSE(MakeVcryptVolume(img, "vm1", "d0").empty());
  const nlohmann::json good = nlohmann::json::parse(RawToken(img));
  const std::vector<std::pair<std::string, std::string>> evil = {
      {"vm", "vm1\nVCRYPT_UNIT=../../evil"},
      {"vm", "vm1 SYSTEMD_WANTS=x"},
      {"disk", "d0\"$env{X}"},
      {"disk", "d-0"},  // would make the unit instance ambiguous
      {"vm", "-vm"},
      {"vm", ""},
  };
  for (const auto& [key, value] : evil) {
    nlohmann::json t = good;
    t[key] = value;
    SetRawToken(img, 0, t.dump());
    auto r = ProbeDevice(img);
    ASSERT_FALSE(r.ok()) << key << "=" << value;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume);
    CliRun c = RunCtl({"probe", img});
    EXPECT_EQ(c.code, 9);
    EXPECT_EQ(c.out, "") << key << "=" << value;
  }
  {
    nlohmann::json t = good;
    t["provider"]["name"] = "p\n1";
    SetRawToken(img, 0, t.dump());
    EXPECT_FALSE(ProbeDevice(img).ok());
  }
  {
    nlohmann::json t = good;
    t["provider"]["type"] = "magic";
    SetRawToken(img, 0, t.dump());
    EXPECT_FALSE(ProbeDevice(img).ok());
  }
  {
    nlohmann::json t = good;
    t["vcrypt_version"] = 2;
    SetRawToken(img, 0, t.dump());
    auto r = ProbeDevice(img);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume);
  }
  // A second vcrypt token makes the volume ambiguous.
  SetRawToken(img, 0, good.dump());
  ASSERT_TRUE(ProbeDevice(img).ok());
  SetRawToken(img, 1, good.dump());
  auto r = ProbeDevice(img);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidVolume);
}

TEST_F(ProbeHeaderTest, NeverWritesTheHeader) {
  std::string img = dir_ / "v.img";
  ASSERT_FALSE(MakeVcryptVolume(img, "vm1", "d0").empty());
  auto read_header = [&] {
    std::ifstream in(img, std::ios::binary);
    std::vector<char> buf(kLuks2HeaderSize);
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    return buf;
  };
  auto before = read_header();
  struct stat st0;
  ASSERT_EQ(stat(img.c_str(), &st0), 0);
  ASSERT_TRUE(ProbeDevice(img).ok());
  EXPECT_EQ(read_header(), before);
}

}  // namespace
}  // namespace vcrypt
