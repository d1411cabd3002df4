// `vcryptctl probe` (cli/probe.h) and the fast probe `vcrypt-probe`
// (probe/probe.h): what udev imports for a block device. The header tests
// format LUKS volumes on sparse files through libcryptsetup (no
// device-mapper needed) and so need root; without root they are skipped.
// The rest runs anywhere.
#include "cli/probe.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <libcryptsetup.h>
#include <openssl/evp.h>
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
#include "common/aead.h"
#include "common/handles.h"
#include "common/random.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"
#include "probe/probe.h"
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

// --- the fast probe (probe/probe.h, vcrypt-probe)
// -----------------------------

namespace fast {

constexpr uint64_t kHdr = 16 << 10;  // libcryptsetup's default header copy size

std::vector<unsigned char> ReadBytes(const std::string& path, uint64_t off,
                                     size_t n) {
  std::vector<unsigned char> b(n);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_EQ(pread(fd.get(), b.data(), n, static_cast<off_t>(off)),
            static_cast<ssize_t>(n));
  return b;
}

void WriteBytes(const std::string& path, uint64_t off,
                const std::vector<unsigned char>& b) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_EQ(pwrite(fd.get(), b.data(), b.size(), static_cast<off_t>(off)),
            static_cast<ssize_t>(b.size()));
}

// Recomputes the SHA-256 checksum of the header copy at `off`.
void Reseal(const std::string& path, uint64_t off) {
  auto c = ReadBytes(path, off, kHdr);
  std::fill(c.begin() + 448, c.begin() + 512, 0);
  unsigned int n = 0;
  ASSERT_EQ(
      EVP_Digest(c.data(), c.size(), c.data() + 448, &n, EVP_sha256(), nullptr),
      1);
  WriteBytes(path, off, c);
}

// The primary copy's JSON text.
std::string JsonText(const std::string& path) {
  auto a = ReadBytes(path, 4096, kHdr - 4096);
  return std::string(reinterpret_cast<const char*>(a.data()));
}

// Writes `text` as the JSON area of both copies, with valid checksums: a
// header whose metadata only this test chose.
void SetJsonText(const std::string& path, const std::string& text) {
  ASSERT_LT(text.size(), kHdr - 4096);
  std::vector<unsigned char> area(kHdr - 4096, 0);
  std::copy(text.begin(), text.end(), area.begin());
  for (uint64_t off : {uint64_t{0}, kHdr}) {
    WriteBytes(path, off + 4096, area);
    Reseal(path, off);
  }
}

const std::string kProbe = std::string(VCRYPT_BINARY_DIR) + "/cli/vcrypt-probe";
const std::string kCtl = std::string(VCRYPT_BINARY_DIR) + "/cli/vcryptctl";

}  // namespace fast

TEST_F(ProbeHeaderTest, FastProbeAnswersAsTheFullProbeForVcryptVolumes) {
  for (const char* type : {"native", "standard", "trusted"}) {
    std::string img = dir_ / (std::string(type) + ".img");
    ASSERT_FALSE(MakeVcryptVolume(img, "db", "data", "p1", type).empty());
    auto full = ProbeDevice(img);
    ASSERT_TRUE(full.ok()) << full.error().message;
    std::string why;
    auto quick = FastProbe(img, &why);
    ASSERT_TRUE(quick.has_value()) << type << ": " << why;
    EXPECT_EQ(*quick, *full) << type;
  }
}

TEST_F(ProbeHeaderTest, FastProbeHasNoAnswerWhereTheFullProbeSaysNo) {
  MakeFile(dir_ / "zeros", kFileSize);
  MakeFile(dir_ / "garbage", kFileSize, true);
  MakeFile(dir_ / "empty", 0);
  MakePlainLuks(dir_ / "luks2.img", CRYPT_LUKS2);
  MakePlainLuks(dir_ / "luks1.img", CRYPT_LUKS1);
  for (const char* n :
       {"zeros", "garbage", "empty", "luks2.img", "luks1.img", "missing"}) {
    std::string why;
    EXPECT_FALSE(FastProbe(dir_ / n, &why).has_value()) << n;
    EXPECT_FALSE(why.empty()) << n;
    EXPECT_FALSE(ProbeDevice(dir_ / n).ok()) << n;
  }
  // Tokens the full probe refuses.
  std::string img = dir_ / "v.img";
  ASSERT_FALSE(MakeVcryptVolume(img, "vm1", "d0").empty());
  const nlohmann::json good = nlohmann::json::parse(RawToken(img));
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, std::string>>{
           {"vm", "vm1\nVCRYPT_UNIT=../../evil"},
           {"disk", "d-0"},
           {"vm", ""}}) {
    nlohmann::json t = good;
    t[key] = value;
    SetRawToken(img, 0, t.dump());
    std::string why;
    EXPECT_FALSE(FastProbe(img, &why).has_value()) << key << "=" << value;
    EXPECT_FALSE(ProbeDevice(img).ok());
  }
  SetRawToken(img, 0, good.dump());
  std::string why;
  ASSERT_TRUE(FastProbe(img, &why).has_value()) << why;
  SetRawToken(img, 1, good.dump());  // two vcrypt tokens: ambiguous
  EXPECT_FALSE(FastProbe(img, &why).has_value());
  EXPECT_EQ(why, "more than one vcrypt token");
}

// A damaged or outdated header copy is left to libcryptsetup, which reads
// the good one: the fast probe must not answer from a copy libcryptsetup
// would not use.
TEST_F(ProbeHeaderTest, FastProbeLeavesDamagedHeadersToLibcryptsetup) {
  std::string img = dir_ / "v.img";
  ASSERT_FALSE(MakeVcryptVolume(img, "web-01", "root").empty());
  std::string why;
  ASSERT_TRUE(FastProbe(img, &why).has_value()) << why;

  // A flipped byte in the primary JSON (the VM name, still valid JSON):
  // without the checksum the fast probe would answer "web-00".
  auto area = fast::ReadBytes(img, 4096, fast::kHdr - 4096);
  std::string text(area.begin(), area.end());
  size_t at = text.find("web-01");
  ASSERT_NE(at, std::string::npos);
  fast::WriteBytes(img, 4096 + at + 5, {'0'});
  EXPECT_FALSE(FastProbe(img, &why).has_value());
  EXPECT_EQ(why, "LUKS2 header checksum mismatch");
  auto full = ProbeDevice(img);
  ASSERT_TRUE(full.ok()) << full.error().message;
  EXPECT_EQ(full->vm, "web-01");

  // Two intact copies with different sequence ids (an interrupted update).
  ASSERT_FALSE(MakeVcryptVolume(img, "web-01", "root").empty());
  auto seq = fast::ReadBytes(img, fast::kHdr + 16, 8);
  seq[7] ^= 1;
  fast::WriteBytes(img, fast::kHdr + 16, seq);
  fast::Reseal(img, fast::kHdr);
  EXPECT_FALSE(FastProbe(img, &why).has_value());
  EXPECT_EQ(why, "the two LUKS2 header copies differ");

  // No secondary copy where the primary says.
  ASSERT_FALSE(MakeVcryptVolume(img, "web-01", "root").empty());
  fast::WriteBytes(img, fast::kHdr, {'X'});
  EXPECT_FALSE(FastProbe(img, &why).has_value());
  EXPECT_EQ(why, "no secondary LUKS2 header where the primary says");
}

// Metadata that only a crafted header holds, with valid checksums.
TEST_F(ProbeHeaderTest, FastProbeOnCraftedMetadata) {
  std::string img = dir_ / "v.img";
  ASSERT_FALSE(MakeVcryptVolume(img, "vm1", "d0").empty());
  const std::string text = fast::JsonText(img);
  std::string why;
  // Control: the same metadata rewritten by this test is answered.
  fast::SetJsonText(img, nlohmann::json::parse(text).dump());
  ASSERT_TRUE(FastProbe(img, &why).has_value()) << why;

  // A duplicated member: parsers may disagree on which copy counts.
  fast::SetJsonText(
      img, R"({"tokens":{},)" + nlohmann::json::parse(text).dump().substr(1));
  EXPECT_FALSE(FastProbe(img, &why).has_value());
  EXPECT_EQ(why, "the LUKS2 JSON area has a duplicated member");

  // Deep nesting within the 12 KiB area: no recursion to overflow.
  nlohmann::json j = nlohmann::json::parse(text);
  std::string deep = std::string(4000, '[') + std::string(4000, ']');
  std::string dumped = j.dump();
  fast::SetJsonText(img, R"({"x":)" + deep + "," + dumped.substr(1));
  auto r = FastProbe(img, &why);
  ASSERT_TRUE(r.has_value()) << why;
  EXPECT_EQ(r->vm, "vm1");
  fast::SetJsonText(img, R"({"x":)" + std::string(11000, '[') + "}");
  EXPECT_FALSE(FastProbe(img, &why).has_value());

  // Not NUL-terminated, not an object, a token that is no object.
  std::vector<unsigned char> full(fast::kHdr - 4096, 'a');
  fast::WriteBytes(img, 4096, full);
  fast::Reseal(img, 0);
  EXPECT_FALSE(FastProbe(img, &why).has_value());
  EXPECT_EQ(why, "the LUKS2 JSON area is not terminated");
  fast::SetJsonText(img, "[1,2]");
  EXPECT_FALSE(FastProbe(img, &why).has_value());
  fast::SetJsonText(img,
                    R"({"tokens":{"0":"vcrypt","1":[{"type":"vcrypt"}]}})");
  EXPECT_FALSE(FastProbe(img, &why).has_value());
  EXPECT_EQ(why, "no vcrypt token");
}

// The program: the fast answer where it has one, vcryptctl probe's answer
// and exit code otherwise.
TEST_F(ProbeHeaderTest, VcryptProbeProgramAnswersAsVcryptctlProbe) {
  std::string img = dir_ / "v.img";
  ASSERT_FALSE(MakeVcryptVolume(img, "vm1", "d0").empty());
  MakePlainLuks(dir_ / "luks2.img", CRYPT_LUKS2);
  for (const std::string& dev :
       {img, std::string(dir_ / "luks2.img"), std::string(dir_ / "missing")}) {
    testing::CliRun a = testing::RunBinary(fast::kProbe, {"vcrypt-probe", dev});
    testing::CliRun b =
        testing::RunBinary(fast::kCtl, {"vcryptctl", "probe", dev});
    EXPECT_EQ(a.code, b.code) << dev;
    EXPECT_EQ(a.out, b.out) << dev;
    EXPECT_EQ(a.err, b.err) << dev;
  }
  testing::CliRun a = testing::RunBinary(fast::kProbe, {"vcrypt-probe", img});
  EXPECT_EQ(a.code, 0);
  EXPECT_NE(a.out.find("VCRYPT_UNIT=vm1-d0\n"), std::string::npos) << a.out;
  testing::CliRun p =
      testing::RunBinary(fast::kProbe, {"vcrypt-probe", dir_ / "luks2.img"});
  EXPECT_EQ(p.code, 9);
  EXPECT_EQ(Lines(p.err), 1) << p.err;
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"vcrypt-probe"},
                                             {"vcrypt-probe", "a", "b"},
                                             {"vcrypt-probe", "--help"}}) {
    testing::CliRun u = testing::RunBinary(fast::kProbe, args);
    EXPECT_EQ(u.code, 2);
    EXPECT_EQ(u.out, "");
    EXPECT_EQ(Lines(u.err), 1) << u.err;
  }
}

// Without vcryptctl beside it (and none installed where it looks), the
// program still answers for vcrypt volumes; anything else is one line,
// exit 1.
TEST_F(ProbeHeaderTest, VcryptProbeWithoutVcryptctl) {
  std::string img = dir_ / "v.img";
  ASSERT_FALSE(MakeVcryptVolume(img, "vm1", "d0").empty());
  MakePlainLuks(dir_ / "luks2.img", CRYPT_LUKS2);
  const std::string copy = dir_ / "vcrypt-probe";
  fs::copy_file(fast::kProbe, copy);
  ASSERT_EQ(chmod(copy.c_str(), 0755), 0);
  testing::CliRun a = testing::RunBinary(copy, {"vcrypt-probe", img});
  EXPECT_EQ(a.code, 0) << a.err;
  EXPECT_NE(a.out.find("VCRYPT_VOLUME=1\n"), std::string::npos);
  testing::CliRun p =
      testing::RunBinary(copy, {"vcrypt-probe", dir_ / "luks2.img"});
  EXPECT_EQ(p.code, 1);
  EXPECT_EQ(p.out, "");
  EXPECT_EQ(Lines(p.err), 1) << p.err;
  EXPECT_NE(p.err.find("install vcrypt completely"), std::string::npos)
      << p.err;
}

// What makes it fast: it loads neither libcryptsetup nor libdevmapper (nor
// what they pull in), unlike vcryptctl.
TEST(ProbeTest, VcryptProbeLoadsNoLibcryptsetup) {
  testing::CliRun p =
      testing::RunBinary(fast::kProbe, {"vcrypt-probe", "/x"}, true);
  ASSERT_EQ(p.code, 0) << p.err;
  for (const char* lib :
       {"libcryptsetup", "libdevmapper", "libjson-c", "libboost", "libblkid"})
    EXPECT_EQ(p.out.find(lib), std::string::npos) << lib << " in:\n" << p.out;
  testing::CliRun c = testing::RunBinary(fast::kCtl, {"vcryptctl"}, true);
  EXPECT_NE(c.out.find("libcryptsetup"), std::string::npos) << c.out;
}

}  // namespace
}  // namespace vcrypt
