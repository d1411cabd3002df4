// Recovery keys (docs/recovery.md), on vcrypt volumes in image files:
// root, no device-mapper (keyslots are added, checked and destroyed on the
// header; crypt_activate_by_passphrase without a name only checks). The
// real cryptsetup binary is the second opinion.
//  - RecoveryKeyslotTest: dmtools (AddRecoveryKeyslot & co.).
//  - RecoveryDaemonTest: vcryptd's Controller behind a real Server socket,
//    driven by vcryptctl in-process: the key printed once, opening the
//    volume, and found in no audit record, log line or state file.
// `cryptsetup open` with the recovery key while the KMS is down, on a real
// dm-crypt, belongs in tests/integration (VM harness).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <libcryptsetup.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/cli.h"
#include "client/client.h"
#include "common/aead.h"
#include "common/atomic_file.h"
#include "common/handles.h"
#include "common/random.h"
#include "common/wire.h"
#include "daemon/audit.h"
#include "daemon/controller.h"
#include "daemon/server.h"
#include "dmtools/token.h"
#include "dmtools/volume.h"
#include "tests/test_util.h"
#include "tests/unit/cli_run.h"
#include "tests/unit/daemon_fixture.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using testing::DaemonTest;

constexpr const char* kCryptsetup = "/usr/sbin/cryptsetup";

// Runs `argv` with `input` on stdin; exit code (or -1) and stdout.
struct Run {
  int code = -1;
  std::string out;
};
Run RunWithInput(const std::vector<std::string>& argv, const std::string& input) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  (void)!write(in[1], input.data(), input.size());
  close(in[1]);
  Run r;
  char buf[4096];
  for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;)
    r.out.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int status = 0;
  if (waitpid(pid, &status, 0) == pid && WIFEXITED(status)) r.code = WEXITSTATUS(status);
  return r;
}

// `cryptsetup luksDump --dump-json-metadata` of `path`.
Json LuksDump(const std::string& path) {
  Run r = RunWithInput({kCryptsetup, "luksDump", "--dump-json-metadata", path}, "");
  EXPECT_EQ(r.code, 0) << r.out;
  Json j = Json::parse(r.out, nullptr, false);
  EXPECT_TRUE(j.is_object()) << r.out;
  return j;
}

// The passphrase as someone types it at cryptsetup's prompt (stdin is not
// a terminal: one line), checked without activating anything.
int CryptsetupTestPassphrase(const std::string& path, const std::string& passphrase) {
  return RunWithInput({kCryptsetup, "open", "--type", "luks2", "--test-passphrase", path},
                      passphrase + "\n")
      .code;
}

std::string Text(const SecureBuffer& b) { return std::string(b.chars(), b.size()); }

SecureBuffer Buffer(const std::string& s) {
  return SecureBuffer::CopyOf(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

struct CryptFree {
  void operator()(crypt_device* cd) const { crypt_free(cd); }
};
using Crypt = std::unique_ptr<crypt_device, CryptFree>;

// crypt_activate_by_passphrase(cd, NULL, slot, ...): the keyslot number
// when `passphrase` opens it, else a negative errno. Nothing is activated.
int CheckPassphrase(const std::string& path, int slot, const std::string& passphrase) {
  crypt_device* raw = nullptr;
  if (crypt_init(&raw, path.c_str()) != 0) return -1000;
  Crypt cd(raw);
  if (crypt_load(cd.get(), CRYPT_LUKS2, nullptr) != 0) return -1001;
  return crypt_activate_by_passphrase(cd.get(), nullptr, slot, passphrase.data(),
                                      passphrase.size(), 0);
}

class RecoveryKeyslotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "formatting LUKS volumes needs root";
    if (access(kCryptsetup, X_OK) != 0) GTEST_SKIP() << "no " << kCryptsetup;
    path_ = dir_ / "vol.img";
    UniqueFd fd(open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(ftruncate(fd.get(), 20 << 20), 0);
    auto dek = RandomKey(kDekSize);
    ASSERT_TRUE(dek.ok());
    dek_ = std::move(dek).value();
    FormatParams p;
    p.device = path_;
    p.label = "vm1/d0";
    auto uuid = FormatVolume(p, dek_, [&](const std::string& u) -> Result<std::string> {
      VcryptToken t;
      t.vm = "vm1";
      t.disk = "d0";
      t.provider_name = "p1";
      t.provider_type = "native";
      t.kek.kek_id = "0b6f0d6e-6b8e-4a43-9a7e-3f2b1c0d9e8f";
      VCRYPT_ASSIGN_OR_RETURN(SecureBuffer kek, RandomKey(kAeadKeySize));
      VCRYPT_ASSIGN_OR_RETURN(t.dek, WrapKey(kek, dek_, DekAad(u, t.kek.kek_id, "p1")));
      return t.ToJsonString();
    });
    ASSERT_TRUE(uuid.ok()) << uuid.error().message;
    uuid_ = *uuid;
    token_ = *ReadHeader(path_)->token_json;
  }

  // The header has no keyslot and only its vcrypt token, unchanged.
  void ExpectPristine() {
    auto h = ReadHeader(path_);
    ASSERT_TRUE(h.ok()) << h.error().message;
    EXPECT_EQ(h->active_keyslots, 0);
    EXPECT_EQ(h->token_json, token_);
    Json dump = LuksDump(path_);
    EXPECT_EQ(dump["keyslots"], Json::object());
    ASSERT_EQ(dump["tokens"].size(), 1u) << dump["tokens"];
    EXPECT_EQ(dump["tokens"].begin().value()["type"], "vcrypt");
    auto st = ReadRecoveryKeyslot(path_);
    ASSERT_TRUE(st.ok()) << st.error().message;
    EXPECT_FALSE(st->slot.has_value());
  }

  testing::TempDir dir_{"recovery-keyslot"};
  std::string path_, uuid_, token_;
  SecureBuffer dek_;
};

TEST_F(RecoveryKeyslotTest, AddedKeyslotOpensWithItsKeyAndIsRemovedCleanly) {
  auto key = RandomRecoveryKey();
  ASSERT_TRUE(key.ok());
  auto added = AddRecoveryKeyslot(path_, dek_, *key, "2030-01-02T03:04:05Z");
  ASSERT_TRUE(added.ok()) << added.error().message;
  EXPECT_EQ(added->keyslot, 0);
  EXPECT_EQ(added->created, "2030-01-02T03:04:05Z");
  EXPECT_EQ(added->pbkdf, "argon2id");
  EXPECT_GT(added->memory_kib, 0u);
  EXPECT_GT(added->iterations, 0u);

  // libcryptsetup's view: one argon2id keyslot, the marker bound to it,
  // the vcrypt token as it was.
  auto st = ReadRecoveryKeyslot(path_);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(st->uuid, uuid_);
  ASSERT_TRUE(st->slot.has_value());
  EXPECT_EQ(st->slot->keyslot, added->keyslot);
  EXPECT_EQ(st->slot->token_id, added->token_id);
  auto h = ReadHeader(path_);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->active_keyslots, 1);
  EXPECT_EQ(h->key_bits, 512u);
  EXPECT_EQ(h->token_json, token_);
  EXPECT_TRUE(VerifyDek(path_, dek_).ok());

  // cryptsetup's view, and the key opening the volume without vcrypt.
  Json dump = LuksDump(path_);
  ASSERT_EQ(dump["keyslots"].size(), 1u) << dump["keyslots"];
  const Json& ks = dump["keyslots"]["0"];
  EXPECT_EQ(ks["type"], "luks2");
  EXPECT_EQ(ks["kdf"]["type"], "argon2id");
  EXPECT_EQ(ks["kdf"]["memory"], added->memory_kib);
  ASSERT_EQ(dump["tokens"].size(), 2u) << dump["tokens"];
  const Json& marker = dump["tokens"][std::to_string(added->token_id)];
  EXPECT_EQ(marker["type"], "vcrypt-recovery");
  EXPECT_EQ(marker["keyslots"], Json::array({"0"}));
  EXPECT_EQ(marker["vcrypt_recovery_version"], 1);
  EXPECT_EQ(CheckPassphrase(path_, added->keyslot, Text(*key)), added->keyslot);
  std::string wrong = Text(*key);
  wrong[0] = wrong[0] == 'c' ? 'b' : 'c';
  EXPECT_EQ(CheckPassphrase(path_, added->keyslot, wrong), -EPERM);
  EXPECT_EQ(CryptsetupTestPassphrase(path_, Text(*key)), 0);
  EXPECT_NE(CryptsetupTestPassphrase(path_, wrong), 0);

  // One recovery keyslot per volume.
  auto again = AddRecoveryKeyslot(path_, dek_, *key, "2030-01-02T03:04:05Z");
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kExists);
  EXPECT_NE(again.error().message.find("(keyslot 0)"), std::string::npos)
      << again.error().message;
  EXPECT_EQ(ReadHeader(path_)->active_keyslots, 1);

  auto removed = RemoveRecoveryKeyslot(path_);
  ASSERT_TRUE(removed.ok()) << removed.error().message;
  EXPECT_EQ(removed->keyslot, 0);
  ExpectPristine();
  EXPECT_NE(CryptsetupTestPassphrase(path_, Text(*key)), 0);
  auto none = RemoveRecoveryKeyslot(path_);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::kNotFound);
}

// Refusals that cost no key derivation, each leaving the header as it was.
TEST_F(RecoveryKeyslotTest, RefusalsLeaveTheHeaderAlone) {
  SecureBuffer key = Buffer("cbdef-ghijk");
  auto wrong_dek = RandomKey(kDekSize);
  ASSERT_TRUE(wrong_dek.ok());
  auto r = AddRecoveryKeyslot(path_, *wrong_dek, key, "t");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto) << r.error().message;
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
  ExpectPristine();

  r = AddRecoveryKeyslot(path_, dek_, SecureBuffer(), "t");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  r = AddRecoveryKeyslot(dir_ / "missing.img", dek_, key, "t");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  ExpectPristine();
}

// A keyslot vcrypt did not mark is not a recovery key and is never
// destroyed; an unbound marker (a removal cut between its two writes)
// counts as no recovery key.
TEST_F(RecoveryKeyslotTest, UnmarkedKeyslotsAndUnboundMarkersAreNotRecoveryKeys) {
  {
    crypt_device* raw = nullptr;
    ASSERT_EQ(crypt_init(&raw, path_.c_str()), 0);
    Crypt cd(raw);
    ASSERT_EQ(crypt_load(cd.get(), CRYPT_LUKS2, nullptr), 0);
    crypt_pbkdf_type cheap{};
    cheap.type = CRYPT_KDF_PBKDF2;
    cheap.hash = "sha256";
    cheap.iterations = 1000;
    cheap.flags = CRYPT_PBKDF_NO_BENCHMARK;
    ASSERT_EQ(crypt_set_pbkdf_type(cd.get(), &cheap), 0);
    ASSERT_EQ(crypt_keyslot_add_by_volume_key(cd.get(), 3, dek_.chars(), dek_.size(), "pw", 2),
              3);
    ASSERT_GE(crypt_token_json_set(cd.get(), CRYPT_ANY_TOKEN,
                                   R"({"type":"vcrypt-recovery","keyslots":[]})"),
              0);
  }
  auto st = ReadRecoveryKeyslot(path_);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_FALSE(st->slot.has_value());
  auto r = RemoveRecoveryKeyslot(path_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(ReadHeader(path_)->active_keyslots, 1);
  EXPECT_EQ(CheckPassphrase(path_, 3, "pw"), 3);

  // A marker bound to a keyslot is one, whoever wrote it.
  {
    crypt_device* raw = nullptr;
    ASSERT_EQ(crypt_init(&raw, path_.c_str()), 0);
    Crypt cd(raw);
    ASSERT_EQ(crypt_load(cd.get(), CRYPT_LUKS2, nullptr), 0);
    ASSERT_GE(crypt_token_json_set(cd.get(), CRYPT_ANY_TOKEN,
                                   R"({"type":"vcrypt-recovery","keyslots":["3"]})"),
              0);
  }
  st = ReadRecoveryKeyslot(path_);
  ASSERT_TRUE(st.ok()) << st.error().message;
  ASSERT_TRUE(st->slot.has_value());
  EXPECT_EQ(st->slot->keyslot, 3);
  EXPECT_EQ(st->slot->pbkdf, "pbkdf2");
  ASSERT_TRUE(RemoveRecoveryKeyslot(path_).ok());
  EXPECT_EQ(ReadHeader(path_)->active_keyslots, 0);
}

// argon2id allocates its memory cost: when that fails (here: an address
// space limit in a child process, as a small or crowded host would), the
// error is one line, and no keyslot or marker is left.
TEST_F(RecoveryKeyslotTest, OutOfMemoryIsOneLineAndLeavesNothing) {
#if defined(__SANITIZE_ADDRESS__)
  // ASan's allocator aborts instead of returning NULL under the limit.
  GTEST_SKIP() << "an address-space limit does not mix with AddressSanitizer";
#endif
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(p[0]);
    std::ifstream status("/proc/self/status");
    uint64_t vm_kib = 0;
    for (std::string k; status >> k;)
      if (k == "VmSize:" && (status >> vm_kib)) break;
    rlimit lim{};
    lim.rlim_cur = lim.rlim_max = (vm_kib << 10) + (8u << 20);
    if (vm_kib == 0 || setrlimit(RLIMIT_AS, &lim) != 0) _exit(100);
    auto key = Buffer("cbdef-ghijk-lnrtu-vcbde-fghij-klnrt-uvcbd-efghi");
    auto r = AddRecoveryKeyslot(path_, dek_, key, "t");
    std::string out = r.ok() ? "ok" : std::string(ErrorCodeName(r.error().code)) + " " +
                                          r.error().message;
    (void)!write(p[1], out.data(), out.size());
    _exit(0);
  }
  close(p[1]);
  std::string got;
  char buf[1024];
  for (ssize_t n; (n = read(p[0], buf, sizeof buf)) > 0;)
    got.append(buf, static_cast<size_t>(n));
  close(p[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(got.rfind("internal cannot add a recovery keyslot to " + path_ +
                          ": not enough memory for argon2id",
                      0),
            0u)
      << got;
  EXPECT_EQ(got.find('\n'), std::string::npos) << got;
  ExpectPristine();
}

TEST(RecoveryKeyFormat, EightGroupsOfFiveModhexCharacters) {
  std::vector<std::string> seen;
  for (int i = 0; i < 64; ++i) {
    auto key = RandomRecoveryKey();
    ASSERT_TRUE(key.ok());
    ASSERT_EQ(key->size(), kRecoveryKeySize);
    ASSERT_EQ(kRecoveryKeySize, 47u);
    std::string k = Text(*key);
    for (size_t j = 0; j < k.size(); ++j) {
      if (j % 6 == 5)
        EXPECT_EQ(k[j], '-') << k;
      else
        EXPECT_NE(kRecoveryKeyAlphabet.find(k[j]), std::string_view::npos) << k;
    }
    seen.push_back(k);
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::unique(seen.begin(), seen.end()), seen.end());
}


// ---------------------------------------------------------------------------
// vcryptd + vcryptctl.

namespace fs = std::filesystem;

// Every audit record, as its line.
class AuditLines : public AuditSink {
 public:
  void Write(const AuditRecord& r) override {
    std::lock_guard lock(mu_);
    lines_.push_back(FormatAuditLine(r));
  }
  std::vector<std::string> Lines() {
    std::lock_guard lock(mu_);
    return lines_;
  }
  // The lines with op=OP request=REQUEST.
  std::vector<std::string> Find(const std::string& op, const std::string& request) {
    std::vector<std::string> out;
    for (const auto& l : Lines())
      if (l.find(" op=" + op + " request=" + request + " ") != std::string::npos)
        out.push_back(l);
    return out;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> lines_;
};

// The recovery key in vcryptctl's output: the only match, or "".
std::string KeyIn(const std::string& text) {
  static const std::regex re("([cbdefghijklnrtuv]{5}-){7}[cbdefghijklnrtuv]{5}");
  auto begin = std::sregex_iterator(text.begin(), text.end(), re);
  if (std::distance(begin, std::sregex_iterator()) != 1) return "";
  return begin->str();
}

class RecoveryDaemonTest : public DaemonTest {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "formatting a volume file needs root";
    if (access(kCryptsetup, X_OK) != 0) GTEST_SKIP() << "no " << kCryptsetup;
    DaemonTest::SetUp();
    image_ = dir_ + "/d0.img";
    ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
    ASSERT_TRUE(Call("vm.create", {{"vm", "vm1"}}).ok());
    auto r = Call("volume.create",
                  {{"vm", "vm1"}, {"disk", "d0"}, {"file", image_}, {"size", 20u << 20}});
    ASSERT_TRUE(r.ok()) << r.error().message;
    uuid_ = (*r)["uuid"];
  }
  void Configure(ControllerOptions& o) override { o.audit = audit_; }
  testing::CliRun Ctl(const std::vector<std::string>& args) {
    std::vector<const char*> argv = {"vcryptctl", "--socket", socket_.c_str()};
    for (const auto& a : args) argv.push_back(a.c_str());
    std::ostringstream out, err;
    int code = RunCli(static_cast<int>(argv.size()), argv.data(), out, err);
    return {code, out.str(), err.str()};
  }
  // volume.list's entry of vm1/d0.
  Json Listed() {
    auto r = Call("volume.list");
    EXPECT_TRUE(r.ok() && (*r)["volumes"].size() == 1u);
    return r.ok() ? (*r)["volumes"][0] : Json();
  }
  // Every byte vcryptd wrote outside the volume: state files, its log
  // lines, the audit records.
  std::string EverythingVcryptdWrote() {
    std::string all;
    all += AllStateBytes();
    all += ServerLog();
    for (const auto& l : audit_->Lines()) all += l + "\n";
    return all;
  }
  void ExpectKeptNowhere(const std::string& key) {
    std::string bare = key;
    bare.erase(std::remove(bare.begin(), bare.end(), '-'), bare.end());
    const std::string all = EverythingVcryptdWrote();
    EXPECT_EQ(all.find(key), std::string::npos);
    EXPECT_EQ(all.find(bare), std::string::npos);
    EXPECT_EQ(all.find(key.substr(0, 17)), std::string::npos);
  }

  std::string image_, uuid_;
  std::shared_ptr<AuditLines> audit_ = std::make_shared<AuditLines>();
};

TEST_F(RecoveryDaemonTest, KeyIsPrintedOnceOpensTheVolumeAndIsKeptNowhere) {
  EXPECT_EQ(Listed()["recovery_key"], false);
  const auto token = ReadHeader(image_)->token_json;
  auto add = Ctl({"volume", "recovery-key", "add", "vm1/d0"});
  ASSERT_EQ(add.code, 0) << add.err;
  EXPECT_EQ(add.err, "");
  const std::string key = KeyIn(add.out);
  ASSERT_FALSE(key.empty()) << "not exactly one key in:\n" << add.out;
  EXPECT_EQ(add.out.rfind("recovery key of vm1/d0 (keyslot 0, argon2id ", 0), 0u) << add.out;
  EXPECT_NE(add.out.find("\n    " + key + "\n"), std::string::npos) << add.out;
  EXPECT_NE(add.out.find("'cryptsetup open " + image_ + " NAME'"), std::string::npos)
      << add.out;

  // The key opens the volume: libcryptsetup, and cryptsetup as typed.
  EXPECT_EQ(CheckPassphrase(image_, 0, key), 0);
  std::string wrong = key;
  wrong.back() = wrong.back() == 'v' ? 'c' : 'v';
  EXPECT_EQ(CheckPassphrase(image_, 0, wrong), -EPERM);
  EXPECT_EQ(CryptsetupTestPassphrase(image_, key), 0);
  Json dump = LuksDump(image_);
  ASSERT_EQ(dump["keyslots"].size(), 1u) << dump["keyslots"];
  EXPECT_EQ(dump["keyslots"]["0"]["kdf"]["type"], "argon2id");
  EXPECT_EQ(dump["tokens"].size(), 2u);

  // Shown as a boolean, never the key.
  EXPECT_EQ(Listed()["recovery_key"], true);
  auto st = Call("status");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ((*st)["vms"][0]["disks"][0]["recovery_key"], true);
  auto list = Ctl({"volume", "list"});
  ASSERT_EQ(list.code, 0) << list.err;
  EXPECT_NE(list.out.find("RECOVERY_KEY"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(" true"), std::string::npos) << list.out;

  // One per volume: exit 6, one line, nothing printed, no second keyslot.
  auto again = Ctl({"volume", "recovery-key", "add", "vm1/d0"});
  EXPECT_EQ(again.code, 6);
  EXPECT_EQ(again.out, "");
  EXPECT_EQ(testing::CountLines(again.err), 1) << again.err;
  EXPECT_NE(again.err.find("vm1/d0 already has a recovery key (keyslot 0, added 20"),
            std::string::npos)
      << again.err;
  EXPECT_EQ(LuksDump(image_)["keyslots"].size(), 1u);

  // Audited (the DEK's unwrap, then the add), and kept nowhere.
  auto added = audit_->Find("recovery.add", "volume.recovery_key.add");
  ASSERT_EQ(added.size(), 1u);
  EXPECT_NE(added[0].find(" vm=vm1 disk=d0 volume=" + uuid_ + " provider=p1 kek_id="),
            std::string::npos)
      << added[0];
  EXPECT_NE(added[0].find(" result=ok"), std::string::npos) << added[0];
  EXPECT_EQ(audit_->Find("dek.unwrap", "volume.recovery_key.add").size(), 1u);
  EXPECT_EQ(audit_->Find("kek.fetch", "volume.recovery_key.add").size(), 1u);
  ExpectKeptNowhere(key);

  auto rm = Ctl({"volume", "recovery-key", "remove", "vm1/d0"});
  ASSERT_EQ(rm.code, 0) << rm.err;
  EXPECT_EQ(rm.out, "removed the recovery key of vm1/d0 (keyslot 0)\n");
  dump = LuksDump(image_);
  EXPECT_EQ(dump["keyslots"], Json::object());
  ASSERT_EQ(dump["tokens"].size(), 1u);
  EXPECT_EQ(dump["tokens"].begin().value()["type"], "vcrypt");
  EXPECT_NE(CryptsetupTestPassphrase(image_, key), 0);
  EXPECT_EQ(Listed()["recovery_key"], false);
  auto removed = audit_->Find("recovery.remove", "volume.recovery_key.remove");
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_NE(removed[0].find(" result=ok"), std::string::npos) << removed[0];

  auto none = Ctl({"volume", "recovery-key", "remove", "vm1/d0"});
  EXPECT_EQ(none.code, 5);
  EXPECT_EQ(none.err, "vcryptctl: volume vm1/d0 has no recovery key\n");
  ExpectKeptNowhere(key);
  EXPECT_EQ(ReadHeader(image_)->token_json, token) << "the vcrypt token changed";
}

// The key crosses the socket after the JSON line, on the secret channel
// (common/wire.h), never inside the JSON; the overload of Handle without
// that channel refuses to make one.
TEST_F(RecoveryDaemonTest, KeyTravelsOnTheSecretChannelOnly) {
  auto refused = controller_->Handle("volume.recovery_key.add", {{"vm", "vm1"}, {"disk", "d0"}},
                                     SecureBuffer(), Caller{});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kInternal);
  EXPECT_EQ(LuksDump(image_)["keyslots"], Json::object());

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_.c_str(), sizeof addr.sun_path - 1);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_TRUE(WriteMessage(fd.get(), {{"op", "volume.recovery_key.add"},
                                      {"args", {{"vm", "vm1"}, {"disk", "d0"}}}})
                  .ok());
  std::string line;
  for (char c; read(fd.get(), &c, 1) == 1 && c != '\n';) line.push_back(c);
  Json body = Json::parse(line, nullptr, false);
  ASSERT_TRUE(body.is_object()) << line;
  ASSERT_EQ(body["ok"], true) << line;
  EXPECT_EQ(body["secret_bytes"], kRecoveryKeySize);
  EXPECT_EQ(body["result"]["keyslot"], 0);
  EXPECT_EQ(body["result"]["pbkdf"]["type"], "argon2id");
  std::string key(kRecoveryKeySize, '\0');
  size_t got = 0;
  while (got < key.size()) {
    ssize_t n = read(fd.get(), key.data() + got, key.size() - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ASSERT_EQ(got, key.size());
  EXPECT_EQ(KeyIn(key), key);
  EXPECT_EQ(line.find(key.substr(0, 11)), std::string::npos) << "key in the JSON line";
  EXPECT_EQ(CheckPassphrase(image_, 0, key), 0);
  ExpectKeptNowhere(key);
}

// The recovery key is for when the key provider is gone; so while it is
// gone, removing the key takes --force, and a new one cannot be made (the
// DEK comes from the provider). --json prints the key in the JSON.
// SetUp formatted a volume through the library, so its process-wide
// settings are in force: libcryptsetup must not dlopen() a
// libcryptsetup-token-vcrypt*.so plugin for vcrypt's own token types.
TEST_F(RecoveryDaemonTest, TokenPluginsAreNeverLoaded) {
  EXPECT_EQ(crypt_token_external_path(), nullptr);
}

TEST_F(RecoveryDaemonTest, WithoutItsProviderRemoveNeedsForceAndAddFails) {
  auto add = Ctl({"--json", "volume", "recovery-key", "add", "vm1/d0"});
  ASSERT_EQ(add.code, 0) << add.err;
  Json j = Json::parse(add.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << add.out;
  const std::string key = j.value("recovery_key", "");
  EXPECT_EQ(KeyIn(key), key);
  EXPECT_EQ(KeyIn(add.out), key);
  EXPECT_EQ(j["vm"], "vm1");
  EXPECT_EQ(j["disk"], "d0");
  EXPECT_EQ(j["keyslot"], 0);
  EXPECT_EQ(j["uuid"], uuid_);
  EXPECT_EQ(j["pbkdf"]["type"], "argon2id");
  EXPECT_EQ(CheckPassphrase(image_, 0, key), 0);

  Stop();
  fs::rename(dir_ + "/state/providers/p1", dir_ + "/p1.away");
  Start();
  auto rm = Ctl({"volume", "recovery-key", "remove", "vm1/d0"});
  EXPECT_EQ(rm.code, 8);
  EXPECT_EQ(testing::CountLines(rm.err), 1) << rm.err;
  EXPECT_NE(rm.err.find("re-run with --force"), std::string::npos) << rm.err;
  EXPECT_EQ(CheckPassphrase(image_, 0, key), 0) << "refused, yet the keyslot changed";
  auto refused = audit_->Find("recovery.remove", "volume.recovery_key.remove");
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_NE(refused[0].find(" result=key_unavailable "), std::string::npos) << refused[0];

  // The existing one is reported before the provider is asked.
  EXPECT_EQ(Ctl({"volume", "recovery-key", "add", "vm1/d0"}).code, 6);

  auto forced = Ctl({"volume", "recovery-key", "remove", "--force", "vm1/d0"});
  ASSERT_EQ(forced.code, 0) << forced.err;
  EXPECT_EQ(LuksDump(image_)["keyslots"], Json::object());

  auto no_kek = Ctl({"volume", "recovery-key", "add", "vm1/d0"});
  EXPECT_EQ(no_kek.code, 8);
  EXPECT_EQ(no_kek.out, "");
  EXPECT_EQ(testing::CountLines(no_kek.err), 1) << no_kek.err;
  EXPECT_EQ(LuksDump(image_)["keyslots"], Json::object());
  EXPECT_EQ(audit_->Find("recovery.add", "volume.recovery_key.add").size(), 1u)
      << "only the first add got as far as a keyslot";
  ExpectKeptNowhere(key);
}

}  // namespace
}  // namespace vcrypt
