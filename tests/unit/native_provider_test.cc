#include "keyproviders/native/native_provider.h"

#include <gtest/gtest.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "common/aead.h"
#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/handles.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;

// Low so the many backup/restore tests stay fast; ProductionIterations
// below runs the real default end to end.
constexpr int kTestIterations = 1000;

class TempDir {
 public:
  TempDir() {
    char t[] = "/tmp/vcrypt-native-test-XXXXXX";
    path_ = mkdtemp(t);
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& p) const { return path_ + "/" + p; }

 private:
  std::string path_;
};

SecureBuffer Password(std::string_view s) {
  return SecureBuffer::CopyOf(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

mode_t ModeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

bool EmptyOrAbsent(const std::string& dir) {
  return !fs::exists(dir) || fs::is_empty(dir);
}

std::unique_ptr<NativeProvider> MustCreate(const std::string& name,
                                           const std::string& dir) {
  auto p = NativeProvider::Create(name, dir);
  EXPECT_TRUE(p.ok()) << p.error().message;
  return p.ok() ? std::move(p).value() : nullptr;
}

NewKek MustCreateKek(NativeProvider& p, std::string_view vm) {
  auto k = p.CreateKek(vm);
  EXPECT_TRUE(k.ok()) << k.error().message;
  return std::move(k).value();
}

class NativeProviderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    provider_ = MustCreate("prov1", dir_ / "prov1");
    ASSERT_NE(provider_, nullptr);
  }
  std::string Backup(const std::string& password = "correct horse") {
    const std::string path = dir_ / "backup.p12";
    fs::remove(path);
    auto st = provider_->Backup(path, Password(password), kTestIterations);
    EXPECT_TRUE(st.ok()) << st.error().message;
    return path;
  }

  TempDir dir_;
  std::unique_ptr<NativeProvider> provider_;
};

// ---- create / load / KEKs --------------------------------------------------

TEST_F(NativeProviderTest, CreateWritesPrivateFiles) {
  EXPECT_EQ(ModeOf(dir_ / "prov1"), 0700u);
  EXPECT_EQ(ModeOf(dir_ / "prov1/primary.key"), 0600u);
  EXPECT_EQ(ModeOf(dir_ / "prov1/config.json"), 0600u);
  EXPECT_EQ(fs::file_size(dir_ / "prov1/primary.key"), 32u);
  auto cfg = nlohmann::json::parse(ReadAll(dir_ / "prov1/config.json"));
  EXPECT_EQ(cfg["type"], "native");
  EXPECT_EQ(cfg["name"], "prov1");
  EXPECT_EQ(cfg["primary_key_id"], provider_->primary_key_id());
  EXPECT_EQ(provider_->primary_key_id().size(), 36u);
}

TEST_F(NativeProviderTest, CreateThenLoadGivesSameKek) {
  NewKek k = MustCreateKek(*provider_, "vm1");
  EXPECT_EQ(k.kek.size(), kKekSize);
  auto loaded = NativeProvider::Load("prov1", dir_ / "prov1");
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ((*loaded)->primary_key_id(), provider_->primary_key_id());
  EXPECT_EQ((*loaded)->name(), "prov1");
  // Through JSON text, as the ref travels in a volume token.
  KekRef ref{k.ref.kek_id, nlohmann::json::parse(k.ref.data.dump())};
  auto kek = (*loaded)->GetKek(ref);
  ASSERT_TRUE(kek.ok()) << kek.error().message;
  EXPECT_TRUE(kek->Equals(k.kek));
  EXPECT_TRUE((*loaded)->Recognizes(ref));
}

TEST_F(NativeProviderTest, KeksOfDifferentVmsDiffer) {
  NewKek a = MustCreateKek(*provider_, "vm1");
  NewKek b = MustCreateKek(*provider_, "vm2");
  EXPECT_NE(a.ref.kek_id, b.ref.kek_id);
  EXPECT_FALSE(a.kek.Equals(b.kek));
  auto ka = provider_->GetKek(a.ref);
  auto kb = provider_->GetKek(b.ref);
  ASSERT_TRUE(ka.ok() && kb.ok());
  EXPECT_TRUE(ka->Equals(a.kek));
  EXPECT_TRUE(kb->Equals(b.kek));
}

TEST_F(NativeProviderTest, KekRefHoldsNoPlaintextKey) {
  NewKek k = MustCreateKek(*provider_, "vm1");
  std::string dump = k.ref.data.dump();
  EXPECT_EQ(dump.find(Base64Encode(k.kek.span())), std::string::npos);
  EXPECT_EQ(k.ref.data["primary_key_id"], provider_->primary_key_id());
  EXPECT_TRUE(WrappedKey::FromJson(k.ref.data["wrapped_kek"]).ok());
}

TEST_F(NativeProviderTest, TamperedWrappedKekIsCryptoError) {
  NewKek k = MustCreateKek(*provider_, "vm1");
  for (const char* member : {"ct", "tag", "iv"}) {
    KekRef ref = k.ref;
    auto& field = ref.data["wrapped_kek"][member];
    auto bytes = Base64Decode(field.get<std::string>());
    ASSERT_TRUE(bytes.ok());
    (*bytes)[0] ^= 0x01;
    field = Base64Encode(*bytes);
    auto r = provider_->GetKek(ref);
    ASSERT_FALSE(r.ok()) << member;
    EXPECT_EQ(r.error().code, ErrorCode::kCrypto) << member;
  }
}

TEST_F(NativeProviderTest, SwappedKekIdIsCryptoError) {
  NewKek a = MustCreateKek(*provider_, "vm1");
  NewKek b = MustCreateKek(*provider_, "vm2");
  KekRef ref{b.ref.kek_id, a.ref.data};
  auto r = provider_->GetKek(ref);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto);
}

TEST_F(NativeProviderTest, RefFromOtherProviderIsKeyUnavailable) {
  auto other = MustCreate("prov2", dir_ / "prov2");
  ASSERT_NE(other, nullptr);
  NewKek k = MustCreateKek(*other, "vm1");
  EXPECT_FALSE(provider_->Recognizes(k.ref));
  auto r = provider_->GetKek(k.ref);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kKeyUnavailable);
  EXPECT_NE(r.error().message.find(other->primary_key_id()), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("restore"), std::string::npos);

  // Claiming our primary key ID does not help: the AAD and key differ.
  KekRef forged = k.ref;
  forged.data["primary_key_id"] = provider_->primary_key_id();
  r = provider_->GetKek(forged);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCrypto);
}

TEST_F(NativeProviderTest, MalformedRefIsInvalidVolume) {
  NewKek k = MustCreateKek(*provider_, "vm1");
  std::vector<KekRef> bad;
  bad.push_back({"not-a-uuid", k.ref.data});
  bad.push_back({k.ref.kek_id, nlohmann::json::array()});
  {
    KekRef r = k.ref;
    r.data.erase("wrapped_kek");
    bad.push_back(r);
  }
  {
    KekRef r = k.ref;
    r.data.erase("primary_key_id");
    bad.push_back(r);
  }
  {
    KekRef r = k.ref;
    r.data["extra"] = 1;
    bad.push_back(r);
  }
  {
    KekRef r = k.ref;
    r.data["wrapped_kek"]["alg"] = "A128GCM";
    bad.push_back(r);
  }
  for (const KekRef& r : bad) {
    auto kek = provider_->GetKek(r);
    ASSERT_FALSE(kek.ok()) << r.kek_id << " " << r.data.dump();
    EXPECT_EQ(kek.error().code, ErrorCode::kInvalidVolume) << r.data.dump();
  }
  EXPECT_FALSE(provider_->Recognizes(KekRef{k.ref.kek_id, 5}));
}

TEST_F(NativeProviderTest, GetKekFromManyThreads) {
  NewKek k = MustCreateKek(*provider_, "vm1");
  std::vector<std::thread> threads;
  std::vector<int> ok(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        auto r = provider_->GetKek(k.ref);
        ok[t] += r.ok() && r->Equals(k.kek);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int n : ok) EXPECT_EQ(n, 50);
}

TEST_F(NativeProviderTest, DescribeHasNoKeyMaterial) {
  nlohmann::json d = provider_->Describe();
  EXPECT_EQ(d["name"], "prov1");
  EXPECT_EQ(d["type"], "native");
  EXPECT_EQ(d["primary_key_id"], provider_->primary_key_id());
  EXPECT_TRUE(d["created"].is_string());
  std::string key = ReadAll(dir_ / "prov1/primary.key");
  std::string dump = d.dump();
  EXPECT_EQ(dump.find(key), std::string::npos);
  EXPECT_EQ(
      dump.find(Base64Encode(std::vector<uint8_t>(key.begin(), key.end()))),
      std::string::npos);
}

TEST_F(NativeProviderTest, LoadRefusesLoosePrimaryKeyMode) {
  const std::string key = dir_ / "prov1/primary.key";
  for (mode_t m : {0644, 0640, 0604, 0400, 0700}) {
    ASSERT_EQ(chmod(key.c_str(), m), 0);
    auto r = NativeProvider::Load("prov1", dir_ / "prov1");
    ASSERT_FALSE(r.ok()) << std::oct << m;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message.find("chmod 600"), std::string::npos)
        << r.error().message;
  }
  ASSERT_EQ(chmod(key.c_str(), 0600), 0);
  EXPECT_TRUE(NativeProvider::Load("prov1", dir_ / "prov1").ok());
}

TEST_F(NativeProviderTest, LoadRefusesGroupWritableDir) {
  ASSERT_EQ(chmod((dir_ / "prov1").c_str(), 0770), 0);
  auto r = NativeProvider::Load("prov1", dir_ / "prov1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(NativeProviderTest, LoadRefusesDamagedFiles) {
  const std::string pdir = dir_ / "prov1";
  const std::string key = ReadAll(pdir + "/primary.key");
  const std::string cfg = ReadAll(pdir + "/config.json");
  auto expect_load = [&](ErrorCode code, const std::string& why) {
    auto r = NativeProvider::Load("prov1", pdir);
    ASSERT_FALSE(r.ok()) << why;
    EXPECT_EQ(r.error().code, code) << why << ": " << r.error().message;
  };
  // Wrong key length (the file keeps its mode: ofstream truncates in place).
  WriteAll(pdir + "/primary.key", key.substr(0, 31));
  expect_load(ErrorCode::kInvalidArgument, "31 bytes");
  WriteAll(pdir + "/primary.key", key + "x");
  expect_load(ErrorCode::kInvalidArgument, "33 bytes");
  WriteAll(pdir + "/primary.key", key);
  ASSERT_TRUE(NativeProvider::Load("prov1", pdir).ok());

  // A symlink to a good key is refused.
  ASSERT_EQ(
      rename((pdir + "/primary.key").c_str(), (dir_ / "real.key").c_str()), 0);
  ASSERT_EQ(
      symlink((dir_ / "real.key").c_str(), (pdir + "/primary.key").c_str()), 0);
  expect_load(ErrorCode::kInvalidArgument, "symlink");
  fs::remove(pdir + "/primary.key");
  expect_load(ErrorCode::kNotFound, "missing key");
  ASSERT_EQ(
      rename((dir_ / "real.key").c_str(), (pdir + "/primary.key").c_str()), 0);

  // config.json: another name, another type, garbage, missing.
  auto j = nlohmann::json::parse(cfg);
  j["name"] = "other";
  WriteAll(pdir + "/config.json", j.dump());
  expect_load(ErrorCode::kInvalidArgument, "name mismatch");
  j = nlohmann::json::parse(cfg);
  j["key_storage"] = "tpm";
  WriteAll(pdir + "/config.json", j.dump());
  expect_load(ErrorCode::kInvalidArgument, "tpm storage");
  j = nlohmann::json::parse(cfg);
  j["primary_key_id"] = "x";
  WriteAll(pdir + "/config.json", j.dump());
  expect_load(ErrorCode::kInvalidArgument, "bad id");
  WriteAll(pdir + "/config.json", "{not json");
  expect_load(ErrorCode::kInvalidArgument, "garbage");
  fs::remove(pdir + "/config.json");
  expect_load(ErrorCode::kNotFound, "missing config");
  auto r = NativeProvider::Load("prov1", dir_ / "nonexistent");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

TEST_F(NativeProviderTest, CreateRefusesUsedDirAndBadName) {
  auto r = NativeProvider::Create("prov1", dir_ / "prov1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kExists);
  // The existing provider is untouched.
  auto loaded = NativeProvider::Load("prov1", dir_ / "prov1");
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ((*loaded)->primary_key_id(), provider_->primary_key_id());

  r = NativeProvider::Create("bad/name", dir_ / "x");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir_ / "x"));

  // An existing empty directory is fine, and gets mode 0700.
  ASSERT_EQ(mkdir((dir_ / "empty").c_str(), 0755), 0);
  EXPECT_NE(MustCreate("prov3", dir_ / "empty"), nullptr);
  EXPECT_EQ(ModeOf(dir_ / "empty"), 0700u);
  // Parents are created.
  EXPECT_NE(MustCreate("prov4", dir_ / "a/b/prov4"), nullptr);
}

// ---- backup / restore ------------------------------------------------------

TEST_F(NativeProviderTest, BackupRestoreUnderNewName) {
  NewKek k = MustCreateKek(*provider_, "vm1");
  const std::string p12 = Backup();
  EXPECT_EQ(ModeOf(p12), 0600u);

  auto restored = NativeProvider::Restore(p12, Password("correct horse"),
                                          "restored", dir_ / "other/restored");
  ASSERT_TRUE(restored.ok()) << restored.error().message;
  EXPECT_EQ((*restored)->name(), "restored");
  EXPECT_EQ((*restored)->primary_key_id(), provider_->primary_key_id());
  EXPECT_TRUE((*restored)->Recognizes(k.ref));
  auto kek = (*restored)->GetKek(k.ref);
  ASSERT_TRUE(kek.ok()) << kek.error().message;
  EXPECT_TRUE(kek->Equals(k.kek));

  // The restored directory is a normal provider directory.
  EXPECT_EQ(ModeOf(dir_ / "other/restored"), 0700u);
  EXPECT_EQ(ModeOf(dir_ / "other/restored/primary.key"), 0600u);
  EXPECT_EQ(ReadAll(dir_ / "other/restored/primary.key"),
            ReadAll(dir_ / "prov1/primary.key"));
  auto loaded = NativeProvider::Load("restored", dir_ / "other/restored");
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  kek = (*loaded)->GetKek(k.ref);
  ASSERT_TRUE(kek.ok());
  EXPECT_TRUE(kek->Equals(k.kek));

  // KEKs made after the restore open on the original too (same key).
  NewKek k2 = MustCreateKek(**loaded, "vm2");
  auto back = provider_->GetKek(k2.ref);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->Equals(k2.kek));
}

TEST_F(NativeProviderTest, BackupDoesNotContainPrimaryKey) {
  const std::string p12 = ReadAll(Backup());
  const std::string key = ReadAll(dir_ / "prov1/primary.key");
  ASSERT_EQ(key.size(), 32u);
  EXPECT_EQ(p12.find(key), std::string::npos);
  // Nor any 8-byte window of it.
  for (size_t i = 0; i + 8 <= key.size(); ++i)
    EXPECT_EQ(p12.find(key.substr(i, 8)), std::string::npos) << i;
}

TEST_F(NativeProviderTest, BackupUsesStatedAlgorithms) {
  const std::string der = ReadAll(Backup());
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  Pkcs12Ptr p12(d2i_PKCS12(nullptr, &p, static_cast<long>(der.size())));
  ASSERT_TRUE(p12);

  // MAC: SHA-256, our iteration count, 16-byte salt.
  const X509_ALGOR* macalg = nullptr;
  const ASN1_OCTET_STRING* salt = nullptr;
  const ASN1_INTEGER* iter = nullptr;
  PKCS12_get0_mac(nullptr, &macalg, &salt, &iter, p12.get());
  ASSERT_TRUE(macalg && salt && iter);
  const ASN1_OBJECT* obj = nullptr;
  X509_ALGOR_get0(&obj, nullptr, nullptr, macalg);
  EXPECT_EQ(OBJ_obj2nid(obj), NID_sha256);
  EXPECT_EQ(ASN1_INTEGER_get(iter), kTestIterations);
  EXPECT_EQ(ASN1_STRING_length(salt), 16);

  // One encrypted safe: PBES2 / PBKDF2-HMAC-SHA256 / AES-256-CBC.
  Pkcs7StackPtr safes(PKCS12_unpack_authsafes(p12.get()));
  ASSERT_TRUE(safes);
  ASSERT_EQ(sk_PKCS7_num(safes.get()), 1);
  PKCS7* safe = sk_PKCS7_value(safes.get(), 0);
  ASSERT_TRUE(PKCS7_type_is_encrypted(safe));
  const X509_ALGOR* alg = safe->d.encrypted->enc_data->algorithm;
  const void* param = nullptr;
  int ptype = 0;
  X509_ALGOR_get0(&obj, &ptype, &param, alg);
  ASSERT_EQ(OBJ_obj2nid(obj), NID_pbes2);
  ASSERT_EQ(ptype, V_ASN1_SEQUENCE);
  PBE2PARAM* pbe2 = static_cast<PBE2PARAM*>(
      ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM), alg->parameter));
  ASSERT_NE(pbe2, nullptr);
  EXPECT_EQ(OBJ_obj2nid(pbe2->encryption->algorithm), NID_aes_256_cbc);
  ASSERT_EQ(OBJ_obj2nid(pbe2->keyfunc->algorithm), NID_id_pbkdf2);
  PBKDF2PARAM* kdf = static_cast<PBKDF2PARAM*>(ASN1_TYPE_unpack_sequence(
      ASN1_ITEM_rptr(PBKDF2PARAM), pbe2->keyfunc->parameter));
  ASSERT_NE(kdf, nullptr);
  EXPECT_EQ(ASN1_INTEGER_get(kdf->iter), kTestIterations);
  ASSERT_NE(kdf->prf, nullptr);
  EXPECT_EQ(OBJ_obj2nid(kdf->prf->algorithm), NID_hmacWithSHA256);
  ASSERT_EQ(kdf->salt->type, V_ASN1_OCTET_STRING);
  EXPECT_EQ(ASN1_STRING_length(kdf->salt->value.octet_string), 16);
  PBKDF2PARAM_free(kdf);
  PBE2PARAM_free(pbe2);
}

TEST_F(NativeProviderTest, WrongPasswordLeavesNothing) {
  const std::string p12 = Backup();
  for (const char* pw : {"wrong", "correct horse\n", "Correct horse"}) {
    auto r = NativeProvider::Restore(p12, Password(pw), "r", dir_ / "r");
    ASSERT_FALSE(r.ok()) << pw;
    EXPECT_EQ(r.error().code, ErrorCode::kCrypto);
    EXPECT_NE(r.error().message.find("wrong password or damaged file"),
              std::string::npos)
        << r.error().message;
    EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
    EXPECT_FALSE(fs::exists(dir_ / "r"));
  }
  // An existing empty target directory stays, empty.
  ASSERT_EQ(mkdir((dir_ / "e").c_str(), 0700), 0);
  auto r = NativeProvider::Restore(p12, Password("wrong"), "e", dir_ / "e");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(EmptyOrAbsent(dir_ / "e"));
}

TEST_F(NativeProviderTest, CorruptedBackupLeavesNothing) {
  const std::string p12 = Backup();
  const std::string good = ReadAll(p12);
  const std::string target = dir_ / "r";
  auto restore = [&] {
    return NativeProvider::Restore(p12, Password("correct horse"), "r", target);
  };

  std::string bad = good;
  bad[bad.size() / 2] ^= 0x01;
  WriteAll(p12, bad);
  auto r = restore();
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.error().code == ErrorCode::kCrypto ||
              r.error().code == ErrorCode::kInvalidArgument)
      << r.error().message;
  EXPECT_FALSE(fs::exists(target));

  for (size_t len : {good.size() - 1, good.size() / 2, size_t{10}, size_t{0}}) {
    WriteAll(p12, good.substr(0, len));
    r = restore();
    ASSERT_FALSE(r.ok()) << len;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << len;
    EXPECT_FALSE(fs::exists(target));
  }

  WriteAll(p12, good + "trailing");
  r = restore();
  ASSERT_FALSE(r.ok());
  EXPECT_FALSE(fs::exists(target));

  WriteAll(p12, good);
  r = restore();
  ASSERT_TRUE(r.ok()) << r.error().message;
}

// Every single-bit flip anywhere in the file either fails or (in the few
// bytes the MAC does not cover and that do not matter, e.g. the version)
// restores the very same key: never a different key, never a crash.
TEST_F(NativeProviderTest, EveryByteFlipFailsOrRestoresSameKey) {
  const std::string p12 = Backup();
  const std::string good = ReadAll(p12);
  const std::string key = ReadAll(dir_ / "prov1/primary.key");
  int failures = 0;
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] ^= 0x04;
    WriteAll(p12, bad);
    const std::string target = dir_ / ("r" + std::to_string(i));
    auto r =
        NativeProvider::Restore(p12, Password("correct horse"), "r", target);
    if (r.ok()) {
      EXPECT_EQ(ReadAll(target + "/primary.key"), key) << i;
      EXPECT_EQ((*r)->primary_key_id(), provider_->primary_key_id()) << i;
    } else {
      ++failures;
      EXPECT_FALSE(fs::exists(target)) << i;
    }
  }
  EXPECT_GT(failures, static_cast<int>(good.size()) * 9 / 10);
}

TEST_F(NativeProviderTest, EmptyPasswordRefused) {
  auto st = provider_->Backup(dir_ / "b.p12", Password(""), kTestIterations);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir_ / "b.p12"));
  st = provider_->Backup(dir_ / "b.p12", Password(std::string("a\0b", 3)),
                         kTestIterations);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kInvalidArgument);

  const std::string p12 = Backup();
  auto r = NativeProvider::Restore(p12, Password(""), "r", dir_ / "r");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir_ / "r"));
}

TEST_F(NativeProviderTest, BackupNeverOverwrites) {
  WriteAll(dir_ / "b.p12", "precious");
  auto st = provider_->Backup(dir_ / "b.p12", Password("pw"), kTestIterations);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kExists);
  EXPECT_EQ(ReadAll(dir_ / "b.p12"), "precious");
}

TEST_F(NativeProviderTest, RestoreRefusesUsedDir) {
  const std::string p12 = Backup();
  auto r = NativeProvider::Restore(p12, Password("correct horse"), "prov1",
                                   dir_ / "prov1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kExists);
  EXPECT_TRUE(NativeProvider::Load("prov1", dir_ / "prov1").ok());
}

TEST_F(NativeProviderTest, RestoreOfNonPkcs12IsInvalidArgument) {
  WriteAll(dir_ / "x.p12", "this is not a PKCS#12 file\n");
  auto r =
      NativeProvider::Restore(dir_ / "x.p12", Password("pw"), "r", dir_ / "r");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir_ / "r"));

  r = NativeProvider::Restore(dir_ / "missing.p12", Password("pw"), "r",
                              dir_ / "r");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_FALSE(fs::exists(dir_ / "r"));
}

// A valid, correctly-passworded PKCS#12 that holds something else (here an
// EC private key, as `openssl pkcs12 -export` would make) is not restored.
TEST_F(NativeProviderTest, RestoreOfForeignPkcs12IsInvalidArgument) {
  EvpPkeyPtr pkey(EVP_EC_gen("P-256"));
  ASSERT_TRUE(pkey);
  Pkcs12Ptr p12(PKCS12_create("pw", "some key", pkey.get(), nullptr, nullptr, 0,
                              0, kTestIterations, kTestIterations, 0));
  ASSERT_TRUE(p12);
  unsigned char* der = nullptr;
  int n = i2d_PKCS12(p12.get(), &der);
  ASSERT_GT(n, 0);
  WriteAll(dir_ / "f.p12", std::string(reinterpret_cast<char*>(der), n));
  OPENSSL_free(der);
  auto r =
      NativeProvider::Restore(dir_ / "f.p12", Password("pw"), "r", dir_ / "r");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << r.error().message;
  EXPECT_FALSE(fs::exists(dir_ / "r"));
}

// The production iteration count, end to end (about a second).
TEST_F(NativeProviderTest, ProductionIterations) {
  NewKek k = MustCreateKek(*provider_, "vm1");
  const std::string p12 = dir_ / "prod.p12";
  auto st = provider_->Backup(p12, Password("a long passphrase"));
  ASSERT_TRUE(st.ok()) << st.error().message;

  const std::string der = ReadAll(p12);
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  Pkcs12Ptr parsed(d2i_PKCS12(nullptr, &p, static_cast<long>(der.size())));
  ASSERT_TRUE(parsed);
  const ASN1_INTEGER* iter = nullptr;
  PKCS12_get0_mac(nullptr, nullptr, nullptr, &iter, parsed.get());
  ASSERT_NE(iter, nullptr);
  EXPECT_EQ(ASN1_INTEGER_get(iter), kBackupIterations);
  EXPECT_GE(kBackupIterations, 600000);

  auto r = NativeProvider::Restore(p12, Password("a long passphrase"), "prod",
                                   dir_ / "prod");
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto kek = (*r)->GetKek(k.ref);
  ASSERT_TRUE(kek.ok());
  EXPECT_TRUE(kek->Equals(k.kek));
}

TEST(StripPasswordFileNewlineTest, StripsOneNewline) {
  auto s = [](std::string_view in) {
    SecureBuffer b = Password(in);
    StripPasswordFileNewline(b);
    return std::string(b.chars(), b.size());
  };
  EXPECT_EQ(s("pw\n"), "pw");
  EXPECT_EQ(s("pw\r\n"), "pw");
  EXPECT_EQ(s("pw\n\n"), "pw\n");
  EXPECT_EQ(s("pw"), "pw");
  EXPECT_EQ(s("pw "), "pw ");
  EXPECT_EQ(s("\n"), "");
  EXPECT_EQ(s(""), "");
}

}  // namespace
}  // namespace vcrypt
