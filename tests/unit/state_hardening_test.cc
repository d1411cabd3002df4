// vcryptd hardening of its state (issue 13, section 3, "Races on paths and
// state"): one daemon per state directory, providers with damaged files,
// backup and restore that neither collide on temporary files nor stall
// the daemon, bounded key derivations in a backup, and private keys in
// OpenSSL's secure heap.
#include <gtest/gtest.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/cli.h"
#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/handles.h"
#include "common/openssl_secure_heap.h"
#include "daemon/controller.h"
#include "dmtools/volume.h"
#include "keyproviders/native/native_provider.h"
#include "keyproviders/standard/tls_client.h"
#include "tests/test_util.h"
#include "tests/unit/daemon_fixture.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using testing::DaemonTest;
using testing::TempDir;

SecureBuffer Secret(std::string_view s) {
  return SecureBuffer::CopyOf(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

// ---- one vcryptd per state directory --------------------------------------

// The lock is an open file description lock, so even two Controllers in
// one process conflict (a POSIX record lock would not).
TEST(StateDirLockTest, TwoControllersOnOneStateDirCannotCoexist) {
  TempDir dir("statelock");
  ControllerOptions o;
  o.state_dir = dir / "state";
  auto first = Controller::Create(o);
  ASSERT_TRUE(first.ok()) << first.error().message;

  auto second = Controller::Create(o);
  ASSERT_FALSE(second.ok()) << "two controllers on one state directory";
  EXPECT_EQ(second.error().code, ErrorCode::kBusy);
  EXPECT_NE(second.error().message.find("pid " + std::to_string(getpid())),
            std::string::npos)
      << second.error().message;
  EXPECT_NE(second.error().message.find(o.state_dir), std::string::npos)
      << second.error().message;
  EXPECT_EQ(second.error().message.find('\n'), std::string::npos);

  // The lock file names the holder.
  auto text = ReadFile(o.state_dir + "/vcryptd.lock");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, std::to_string(getpid()) + "\n");

  // Another state directory is independent.
  ControllerOptions other = o;
  other.state_dir = dir / "other";
  EXPECT_TRUE(Controller::Create(other).ok());

  // Released with the Controller: a restart on the same directory works.
  first->reset();
  auto third = Controller::Create(o);
  ASSERT_TRUE(third.ok()) << third.error().message;
}

// A real second vcryptd process: exit code busy, one line naming the PID
// of the holder (this test process). Costs about 0.1 s.
TEST(StateDirLockTest, SecondVcryptdRefusesToStart) {
  if (geteuid() != 0)
    GTEST_SKIP() << "vcryptd locks memory for keys: needs root";
  TempDir dir("statelock");
  ControllerOptions o;
  o.state_dir = dir / "state";
  auto first = Controller::Create(o);
  ASSERT_TRUE(first.ok()) << first.error().message;

  const std::string err = dir / "err.txt";
  // Under timeout(1): a vcryptd that does start is stopped (exit 124).
  const std::string cmd = "timeout 10 " + std::string(VCRYPT_BINARY_DIR) +
                          "/daemon/vcryptd --state-dir " + o.state_dir +
                          " --socket " + (dir / "sock") + " 2>" + err;
  int st = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(st)) << st;
  EXPECT_EQ(WEXITSTATUS(st), static_cast<int>(ErrorCode::kBusy));
  auto text = ReadFile(err);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(testing::CountLines(*text), 1) << *text;
  EXPECT_NE(text->find("pid " + std::to_string(getpid())), std::string::npos)
      << *text;
  // It touched nothing of the running daemon's: no socket of its own.
  EXPECT_FALSE(fs::exists(dir / "sock"));
}

// ---- providers with damaged files -----------------------------------------

class DamagedProviderTest : public DaemonTest {
 protected:
  Json ProviderEntry(const Json& list, const std::string& name) {
    for (const auto& p : list)
      if (p["name"] == name) return p;
    ADD_FAILURE() << name << " not listed in " << list.dump();
    return Json();
  }
};

// Three native providers: "good" keeps working while "badkey" (primary.key
// cut short) and "badcfg" (config.json garbage) are reported unavailable.
// Formatting volume files needs root; runs in about a second.
TEST_F(DamagedProviderTest, DamagedProviderIsUnavailableAndOthersWork) {
  if (geteuid() != 0) GTEST_SKIP() << "formatting a volume file needs root";
  for (const char* p : {"good", "badkey", "badcfg"})
    ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", p}}).ok())
        << p;
  ASSERT_TRUE(Call("vm.create", {{"vm", "vmgood"}, {"provider", "good"}}).ok());
  ASSERT_TRUE(
      Call("vm.create", {{"vm", "vmbad"}, {"provider", "badkey"}}).ok());
  for (const char* vm : {"vmgood", "vmbad"}) {
    auto r = Call("volume.create", {{"vm", vm},
                                    {"disk", "d0"},
                                    {"file", dir_ + "/" + vm + "-d0.img"},
                                    {"size", 20u << 20}});
    ASSERT_TRUE(r.ok()) << r.error().message;
  }
  Stop();
  const std::string prov = dir_ + "/state/providers/";
  ASSERT_TRUE(
      WriteFileAtomic(prov + "badkey/primary.key", std::string("short")).ok());
  ASSERT_TRUE(
      WriteFileAtomic(prov + "badcfg/config.json", std::string("{garbage"))
          .ok());
  Start();  // asserts that the daemon starts

  auto list = Call("provider.list");
  ASSERT_TRUE(list.ok()) << list.error().message;
  Json good = ProviderEntry((*list)["providers"], "good");
  EXPECT_EQ(good["state"], "available") << good.dump();
  EXPECT_FALSE(good.contains("reason"));
  Json badkey = ProviderEntry((*list)["providers"], "badkey");
  EXPECT_EQ(badkey["state"], "unavailable") << badkey.dump();
  EXPECT_EQ(badkey["type"], "native");
  EXPECT_EQ(badkey["reason"]["code"], "invalid_argument") << badkey.dump();
  EXPECT_NE(badkey["reason"]["message"].get<std::string>().find("primary.key"),
            std::string::npos)
      << badkey.dump();
  Json badcfg = ProviderEntry((*list)["providers"], "badcfg");
  EXPECT_EQ(badcfg["state"], "unavailable") << badcfg.dump();
  EXPECT_NE(badcfg["reason"]["message"].get<std::string>().find("config.json"),
            std::string::npos)
      << badcfg.dump();
  // provider show and status say the same.
  auto show = Call("provider.show", {{"name", "badkey"}});
  ASSERT_TRUE(show.ok());
  EXPECT_EQ((*show)["reason"], badkey["reason"]);
  auto st = Call("status");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(ProviderEntry((*st)["providers"], "badcfg")["reason"],
            badcfg["reason"]);

  // The good provider's VMs work: a new VM, and a new volume of an old VM
  // (which fetches its KEK from the provider: nothing is cached after the
  // restart).
  auto r = Call("vm.create", {{"vm", "vmnew"}, {"provider", "good"}});
  EXPECT_TRUE(r.ok()) << r.error().message;
  r = Call("volume.create", {{"vm", "vmgood"},
                             {"disk", "d1"},
                             {"file", dir_ + "/vmgood-d1.img"},
                             {"size", 20u << 20}});
  EXPECT_TRUE(r.ok()) << r.error().message;
  r = Call("open", {{"vm", "vmgood"}, {"disk", "d0"}});
  if (DeviceMapperAvailable()) {
    EXPECT_TRUE(r.ok()) << r.error().message;
    (void)Call("close", {{"vm", "vmgood"}, {"disk", "d0"}});
  } else {
    EXPECT_EQ(r.error().code, ErrorCode::kNoDeviceMapper) << r.error().message;
  }

  // The damaged provider's VMs fail with key_unavailable naming the reason.
  const std::string reason = badkey["reason"]["message"];
  for (const auto& [op, args] : std::vector<std::pair<std::string, Json>>{
           {"open", {{"vm", "vmbad"}, {"disk", "d0"}}},
           {"open", {{"path", dir_ + "/vmbad-d0.img"}}},
           {"volume.create",
            {{"vm", "vmbad"},
             {"disk", "d1"},
             {"file", dir_ + "/vmbad-d1.img"},
             {"size", 20u << 20}}},
           {"vm.create", {{"vm", "vmbad2"}, {"provider", "badkey"}}}}) {
    r = Call(op, args);
    ASSERT_FALSE(r.ok()) << op << " " << args.dump();
    EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable) << r.error().message;
    EXPECT_NE(r.error().message.find("'badkey'"), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find(reason), std::string::npos)
        << r.error().message;
  }
  EXPECT_FALSE(fs::exists(dir_ + "/vmbad-d1.img"));
  EXPECT_EQ(Call("vm.show", {{"vm", "vmbad2"}}).error().code,
            ErrorCode::kNotFound);
  // No backup of a key that could not be read.
  SecureBuffer pw = Secret("pw");
  r = Call("provider.backup", {{"name", "badkey"}}, &pw);
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable) << r.error().message;

  // An unavailable provider can still be removed: with --force, as a native
  // one (its type is unknown when its config is unreadable).
  EXPECT_EQ(Call("provider.remove", {{"name", "badcfg"}}).error().code,
            ErrorCode::kExists);
  r = Call("provider.remove", {{"name", "badcfg"}, {"force", true}});
  EXPECT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(fs::exists(prov + "badcfg"));
  ASSERT_TRUE(Call("vm.unregister", {{"vm", "vmbad"}}).ok());
  r = Call("provider.remove", {{"name", "badkey"}, {"force", true}});
  EXPECT_TRUE(r.ok()) << r.error().message;
  list = Call("provider.list");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ((*list)["providers"].size(), 1u) << list->dump();
}

// ---- backup and restore ---------------------------------------------------

std::string Der(PKCS12* p12) {
  unsigned char* der = nullptr;
  const int n = i2d_PKCS12(p12, &der);
  EXPECT_GT(n, 0);
  std::string out(reinterpret_cast<char*>(der),
                  n > 0 ? static_cast<size_t>(n) : 0);
  OPENSSL_free(der);
  return out;
}

// A PKCS#12 shaped like a vcrypt backup (one encrypted safe, PBES2 with
// PBKDF2, holding one 32-byte AES-256 secret bag named by a UUID), made
// with OpenSSL's PKCS#12 API, whose safe claims `safe_iter` PBKDF2
// iterations and whose MAC claims `mac_iter`. Counts up to kComputable
// are real. A larger safe count is written over the real one (1) before
// the MAC is computed, so the MAC still verifies under `pw`; a larger MAC
// count is written over the real one after the fact. Either way making
// the file is fast and only reading it would be slow.
constexpr long kComputable = 100000;
std::string CraftBackup(const std::string& pw, long safe_iter, long mac_iter) {
  const unsigned char key[32] = {1, 2, 3};
  STACK_OF(PKCS12_SAFEBAG)* bags = sk_PKCS12_SAFEBAG_new_null();
  PKCS12_SAFEBAG* bag = PKCS12_SAFEBAG_create_secret(
      NID_aes_256_gcm, V_ASN1_OCTET_STRING, key, sizeof key);
  EXPECT_NE(bag, nullptr);
  EXPECT_EQ(PKCS12_add_friendlyname_utf8(
                bag, "01234567-89ab-cdef-0123-456789abcdef", -1),
            1);
  sk_PKCS12_SAFEBAG_push(bags, bag);
  const bool relabel = safe_iter > kComputable;
  PKCS7* p7 = PKCS12_pack_p7encdata(
      NID_aes_256_cbc, pw.data(), static_cast<int>(pw.size()), nullptr, 0,
      relabel ? 1 : static_cast<int>(safe_iter), bags);
  sk_PKCS12_SAFEBAG_pop_free(bags, PKCS12_SAFEBAG_free);
  EXPECT_NE(p7, nullptr);
  X509_ALGOR* alg = p7->d.encrypted->enc_data->algorithm;
  EXPECT_EQ(OBJ_obj2nid(alg->algorithm), NID_pbes2);
  if (relabel) {
    auto* pbe2 = static_cast<PBE2PARAM*>(
        ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM), alg->parameter));
    EXPECT_NE(pbe2, nullptr);
    auto* kdf = static_cast<PBKDF2PARAM*>(ASN1_TYPE_unpack_sequence(
        ASN1_ITEM_rptr(PBKDF2PARAM), pbe2->keyfunc->parameter));
    EXPECT_NE(kdf, nullptr);
    ASN1_INTEGER_set(kdf->iter, safe_iter);
    EXPECT_NE(ASN1_TYPE_pack_sequence(ASN1_ITEM_rptr(PBKDF2PARAM), kdf,
                                      &pbe2->keyfunc->parameter),
              nullptr);
    EXPECT_NE(ASN1_TYPE_pack_sequence(ASN1_ITEM_rptr(PBE2PARAM), pbe2,
                                      &alg->parameter),
              nullptr);
    PBKDF2PARAM_free(kdf);
    PBE2PARAM_free(pbe2);
  }
  STACK_OF(PKCS7)* safes = sk_PKCS7_new_null();
  sk_PKCS7_push(safes, p7);
  Pkcs12Ptr p12(PKCS12_add_safes(safes, 0));
  sk_PKCS7_pop_free(safes, PKCS7_free);
  EXPECT_TRUE(p12);
  EXPECT_EQ(
      PKCS12_set_mac(p12.get(), pw.data(), static_cast<int>(pw.size()), nullptr,
                     0, static_cast<int>(std::min(mac_iter, kComputable)),
                     EVP_sha256()),
      1);
  if (mac_iter > kComputable) {
    const ASN1_INTEGER* iter = nullptr;
    PKCS12_get0_mac(nullptr, nullptr, nullptr, &iter, p12.get());
    EXPECT_NE(iter, nullptr);
    ASN1_INTEGER_set(const_cast<ASN1_INTEGER*>(iter), mac_iter);
  }
  return Der(p12.get());
}

struct RestoreOutcome {
  bool finished = false;  // within the time limit
  std::string result;     // "ok" or "<error code name>: <message>"
  double seconds = 0;
};

// NativeProvider::Restore in a child process, killed after `limit`
// seconds: the old code derived for hours from a crafted file.
RestoreOutcome RestoreInChild(const std::string& p12, const std::string& pw,
                              const std::string& dir, int limit) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    auto r = NativeProvider::Restore(p12, Secret(pw), "r", dir);
    std::string out = r.ok() ? "ok"
                             : std::string(ErrorCodeName(r.error().code)) +
                                   ": " + r.error().message;
    (void)!write(fds[1], out.data(), out.size());
    _exit(0);
  }
  close(fds[1]);
  RestoreOutcome o;
  pollfd p{fds[0], POLLIN, 0};
  if (poll(&p, 1, limit * 1000) == 1) {
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0)
      o.result.append(buf, static_cast<size_t>(n));
    o.finished = true;
  } else {
    kill(pid, SIGKILL);
  }
  waitpid(pid, nullptr, 0);
  close(fds[0]);
  o.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  return o;
}

// A backup claiming 2^31 - 1 or 2^31 iterations (in its safe's PBKDF2,
// with a MAC that verifies; or in its MAC) is refused at once, before any
// derivation, as invalid_argument in one line; nothing is created. Costs
// well under a second (the old code spent hours in PBKDF2 on 2^31 - 1,
// until the 20 s limit here killed it; 2^31 overflowed OpenSSL's int and
// failed by luck).
TEST(BackupIterationCapTest, HugeIterationCountsAreRefusedBeforeDeriving) {
  TempDir dir("itercap");
  struct Case {
    const char* what;
    long safe_iter, mac_iter;
  };
  for (const long huge : {(1L << 31) - 1, 1L << 31}) {
    for (const Case& c : {Case{"safe", huge, 2}, Case{"mac", 2, huge},
                          Case{"both", huge, huge}}) {
      SCOPED_TRACE(std::string(c.what) + " " + std::to_string(huge));
      const std::string path =
          dir / (std::string(c.what) + std::to_string(huge) + ".p12");
      ASSERT_TRUE(
          WriteFileAtomic(path, CraftBackup("pw", c.safe_iter, c.mac_iter))
              .ok());
      RestoreOutcome o = RestoreInChild(path, "pw", dir / "r", 20);
      ASSERT_TRUE(o.finished) << "still deriving after " << o.seconds << " s";
      EXPECT_LT(o.seconds, 5);
      EXPECT_EQ(o.result.rfind("invalid_argument: ", 0), 0u) << o.result;
      EXPECT_NE(o.result.find(std::to_string(huge) + " iterations"),
                std::string::npos)
          << o.result;
      EXPECT_EQ(o.result.find('\n'), std::string::npos) << o.result;
      EXPECT_FALSE(fs::exists(dir / "r"));
    }
  }
  // The crafting itself is sound: with small counts the same file restores.
  const std::string ok = dir / "ok.p12";
  ASSERT_TRUE(WriteFileAtomic(ok, CraftBackup("pw", 1000, 1000)).ok());
  RestoreOutcome o = RestoreInChild(ok, "pw", dir / "r", 20);
  ASSERT_TRUE(o.finished);
  EXPECT_EQ(o.result, "ok");
  // And the cap is well above what `provider backup` writes.
  EXPECT_GE(kMaxBackupIterations, 10 * kBackupIterations);
}

// The cost check reads a safe's parameters before the MAC vouches for
// them: an "encrypted" safe with no content at all (its content is
// OPTIONAL in the ASN.1) is refused, not dereferenced. Run in a child: a
// crash there fails the test instead of the whole binary.
TEST(BackupIterationCapTest, EncryptedSafeWithoutContentIsRefused) {
  TempDir dir("itercap");
  Pkcs7Ptr p7(PKCS7_new());
  ASSERT_EQ(PKCS7_set_type(p7.get(), NID_pkcs7_encrypted), 1);
  PKCS7_ENCRYPT_free(p7->d.encrypted);
  p7->d.encrypted = nullptr;
  STACK_OF(PKCS7)* safes = sk_PKCS7_new_null();
  sk_PKCS7_push(safes, p7.release());
  Pkcs12Ptr p12(PKCS12_add_safes(safes, 0));
  sk_PKCS7_pop_free(safes, PKCS7_free);
  ASSERT_TRUE(p12);
  ASSERT_EQ(PKCS12_set_mac(p12.get(), "pw", 2, nullptr, 0, 1000, EVP_sha256()),
            1);
  const std::string path = dir / "empty-safe.p12";
  ASSERT_TRUE(WriteFileAtomic(path, Der(p12.get())).ok());
  RestoreOutcome o = RestoreInChild(path, "pw", dir / "r", 20);
  ASSERT_TRUE(o.finished);
  EXPECT_EQ(o.result.rfind("invalid_argument: ", 0), 0u)
      << "[" << o.result << "]";
  EXPECT_FALSE(fs::exists(dir / "r"));
}

// vcryptd's state lock is not held while a restore derives its keys:
// vm.list keeps answering, promptly, while a restore of a backup with a
// high (allowed) iteration count runs. Costs about 5 s (the backup and the
// restore each derive 2 x 5,000,000 iterations).
TEST_F(DaemonTest, VmListAnswersWhileARestoreDerivesKeys) {
  ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
  ASSERT_TRUE(Call("vm.create", {{"vm", "vm1"}}).ok());
  // A backup of another key (so the restore succeeds), made directly.
  auto src = NativeProvider::Create("src", dir_ + "/src");
  ASSERT_TRUE(src.ok()) << src.error().message;
  const std::string p12 = dir_ + "/slow.p12";
  ASSERT_TRUE((*src)->Backup(p12, Secret("pw"), 5000000).ok());
  auto bytes = ReadFile(p12);
  ASSERT_TRUE(bytes.ok());
  const std::string b64 = Base64Encode(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size()));

  std::atomic<bool> done{false};
  Result<Json> restored = MakeError(ErrorCode::kInternal, "not run");
  const auto t0 = std::chrono::steady_clock::now();
  std::thread restore([&] {
    SecureBuffer pw = Secret("pw");
    restored = Call("provider.restore", {{"name", "r1"}, {"p12", b64}}, &pw);
    done = true;
  });
  int answered_while_running = 0;
  double slowest = 0;
  while (!done) {
    const auto s = std::chrono::steady_clock::now();
    auto r = Call("vm.list");
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - s)
            .count();
    const bool running = !done;
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ((*r)["vms"].size(), 1u);
    slowest = std::max(slowest, took);
    if (running) ++answered_while_running;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  restore.join();
  const double restore_took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  ASSERT_TRUE(restored.ok()) << restored.error().message;
  EXPECT_EQ((*restored)["primary_key_id"], (*src)->primary_key_id());
  EXPECT_LT(slowest, 0.5) << "vm.list waited for the restore (" << restore_took
                          << " s)";
  EXPECT_GE(answered_while_running, 3);
  // Meaningful only when the restore outlasts the bound by far.
  EXPECT_GT(restore_took, 1.5) << "the restore was too fast to tell";
}

// Backups of one provider at the same time each get their own file: each
// restores with its own password to the provider's key. And a backup
// creates no file in the state directory at all (the old code went through
// one fixed temporary file there, which concurrent backups shared: one
// could return another's file, or find it gone). Costs about 4 s (eight
// derivations of the production iteration count on two cores).
TEST_F(DaemonTest, ConcurrentBackupsEachGetTheirOwnFile) {
  ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
  const std::string id =
      (*Call("provider.show", {{"name", "p1"}}))["primary_key_id"];
  UniqueFd watch(inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  ASSERT_TRUE(watch.valid());
  ASSERT_GE(inotify_add_watch(watch.get(), (dir_ + "/state").c_str(),
                              IN_CREATE | IN_MOVED_TO),
            0);
  constexpr int kN = 4;
  std::vector<Result<Json>> got(kN, MakeError(ErrorCode::kInternal, "not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kN; ++i)
    threads.emplace_back([&, i] {
      SecureBuffer pw = Secret("password " + std::to_string(i));
      got[i] = Call("provider.backup", {{"name", "p1"}}, &pw);
    });
  for (auto& t : threads) t.join();
  threads.clear();
  std::vector<std::string> created;
  alignas(inotify_event) char buf[4096];
  for (ssize_t n; (n = read(watch.get(), buf, sizeof buf)) > 0;) {
    for (char* p = buf; p < buf + n;) {
      auto* ev = reinterpret_cast<inotify_event*>(p);
      created.push_back(ev->len ? ev->name : "?");
      p += sizeof(inotify_event) + ev->len;
    }
  }
  EXPECT_TRUE(created.empty())
      << "a backup created " << created[0] << " in the state directory";
  std::vector<std::string> restored(kN);
  for (int i = 0; i < kN; ++i) {
    ASSERT_TRUE(got[i].ok()) << i << ": " << got[i].error().message;
    auto bytes = Base64Decode((*got[i])["p12"].get<std::string>());
    ASSERT_TRUE(bytes.ok());
    ASSERT_TRUE(
        WriteFileAtomic(dir_ + "/b" + std::to_string(i) + ".p12", *bytes).ok());
  }
  for (int i = 0; i < kN; ++i)
    threads.emplace_back([&, i] {
      const std::string n = std::to_string(i);
      auto r = NativeProvider::Restore(dir_ + "/b" + n + ".p12",
                                       Secret("password " + n), "r" + n,
                                       dir_ + "/r" + n);
      restored[i] = r.ok() ? (*r)->primary_key_id() : r.error().message;
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < kN; ++i) EXPECT_EQ(restored[i], id) << i;
}

// Through the daemon too: refused at once, and the daemon is not held up.
TEST_F(DaemonTest, RestoreOfHugeIterationCountIsRefusedAtOnce) {
  const std::string der = CraftBackup("pw", (1L << 31) - 1, 2);
  const std::string b64 = Base64Encode(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(der.data()), der.size()));
  SecureBuffer pw = Secret("pw");
  const auto t0 = std::chrono::steady_clock::now();
  auto r = Call("provider.restore", {{"name", "r1"}, {"p12", b64}}, &pw);
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << r.error().message;
  EXPECT_NE(r.error().message.find("2147483647 iterations"), std::string::npos)
      << r.error().message;
  EXPECT_LT(took, 2);
  EXPECT_FALSE(fs::exists(dir_ + "/state/providers/r1"));
}

// vcryptctl writes the backup file itself: two backups to the same --out
// at the same time never overwrite each other (one gets "exists"), and
// the file left is whole and restores with its writer's password. Costs
// about 2 s.
TEST_F(DaemonTest, ConcurrentCliBackupsToOneFileNeverOverwrite) {
  ASSERT_TRUE(Call("provider.add", {{"type", "native"}, {"name", "p1"}}).ok());
  const std::string out = dir_ + "/same.p12";
  std::vector<int> codes(2);
  std::vector<std::string> errs(2);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    const std::string pwfile = dir_ + "/pw" + std::to_string(i);
    ASSERT_TRUE(WriteFileAtomic(pwfile, "password " + std::to_string(i)).ok());
    threads.emplace_back([&, i, pwfile] {
      std::vector<const char*> argv = {
          "vcryptctl",       "--socket",    socket_.c_str(), "provider",
          "backup",          "p1",          "--out",         out.c_str(),
          "--password-file", pwfile.c_str()};
      std::ostringstream o, e;
      codes[i] = RunCli(static_cast<int>(argv.size()), argv.data(), o, e);
      errs[i] = e.str();
    });
  }
  for (auto& t : threads) t.join();
  const int winner = codes[0] == 0 ? 0 : 1;
  ASSERT_EQ(codes[winner], 0) << errs[winner];
  EXPECT_EQ(codes[1 - winner], static_cast<int>(ErrorCode::kExists))
      << errs[1 - winner];
  EXPECT_EQ(testing::CountLines(errs[1 - winner]), 1) << errs[1 - winner];
  auto r = NativeProvider::Restore(
      out, Secret("password " + std::to_string(winner)), "r", dir_ + "/r");
  ASSERT_TRUE(r.ok()) << r.error().message;
  // No temporary file left beside it.
  for (auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().filename().string().find("same.p12."), std::string::npos)
        << e.path();
}

// ---- OpenSSL's secure heap ------------------------------------------------

// A self-signed certificate for `key` and both as PEM.
std::pair<std::string, std::string> CertAndKeyPem(EVP_PKEY* key) {
  X509Ptr x(X509_new());
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600);
  X509_set_pubkey(x.get(), key);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(
      name, "CN", MBSTRING_ASC,
      reinterpret_cast<const unsigned char*>("vcrypt-test"), -1, -1, 0);
  X509_set_issuer_name(x.get(), name);
  X509_sign(x.get(), key, EVP_sha256());
  auto pem = [](auto write) {
    BioPtr b(BIO_new(BIO_s_mem()));
    write(b.get());
    char* p = nullptr;
    const long n = BIO_get_mem_data(b.get(), &p);  // NOLINT(runtime/int)
    return std::string(p, static_cast<size_t>(n));
  };
  return {
      pem([&](BIO* b) { PEM_write_bio_X509(b, x.get()); }), pem([&](BIO* b) {
        PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
      })};
}

// The private key a standard provider loads for mutual TLS with its KMS
// (TlsClient::Create, as StandardProvider::Load does) lives in OpenSSL's
// secure heap once vcryptd has set it up (InitOpensslSecureHeap, called
// by DaemonMain before it loads any provider; vcrypt-ta calls it too):
// the heap's use grows by the key when it is loaded and shrinks back when
// it is freed. For an EC and an RSA key. Costs about 0.2 s (RSA keygen).
TEST(SecureHeapTest, KmsClientKeyLivesInOpensslSecureHeap) {
  ASSERT_TRUE(InitOpensslSecureHeap().ok());
  // (CRYPTO_secure_used() crashes on a heap never set up.)
  ASSERT_EQ(CRYPTO_secure_malloc_initialized(), 1);
  EXPECT_TRUE(InitOpensslSecureHeap().ok()) << "a second call is harmless";
  TempDir dir("secheap");
  for (const char* type : {"EC", "RSA"}) {
    SCOPED_TRACE(type);
    EvpPkeyPtr key(std::string(type) == "EC" ? EVP_EC_gen("P-256")
                                             : EVP_RSA_gen(2048));
    ASSERT_TRUE(key);
    auto [cert, key_pem] = CertAndKeyPem(key.get());
    key.reset();
    TlsConfig config;
    config.ca_file = config.cert_file = dir / "cert.pem";
    config.key_file = dir / "key.pem";
    ASSERT_TRUE(WriteFileAtomic(config.cert_file, cert).ok());
    ASSERT_TRUE(WriteFileAtomic(config.key_file, key_pem).ok());
    // Once first: OpenSSL keeps some secure allocations of its own for the
    // process's lifetime (its random generators' seed pools), made lazily.
    ASSERT_TRUE(TlsClient::Create(config).ok());
    const size_t before = CRYPTO_secure_used();
    {
      auto client = TlsClient::Create(config);
      ASSERT_TRUE(client.ok()) << client.error().message;
      EXPECT_GT(CRYPTO_secure_used(), before)
          << "the private key is not in the secure heap";
    }
    EXPECT_EQ(CRYPTO_secure_used(), before) << "freed with the client";
  }
}

}  // namespace
}  // namespace vcrypt
