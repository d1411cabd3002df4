// vcrypt-ta's admin commands and service start-up. Over 800 lines: issue 14
// separates the admin tool from the services' start-up.
#include "trustauthority/ta_tool.h"

#include <fcntl.h>
#include <httplib.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/program_options.hpp>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <set>
#include <thread>

#include "common/atomic_file.h"
#include "common/clock.h"
#include "common/handles.h"
#include "common/hex.h"
#include "keyproviders/standard/kmip.h"
#include "keyproviders/standard/standard_provider.h"
#include "keyproviders/standard/tls_client.h"
#include "taprotocol/jws.h"
#include "trustauthority/attestation.h"
#include "trustauthority/conn_guard.h"
#include "trustauthority/http.h"
#include "trustauthority/kps.h"

namespace vcrypt {
namespace {

namespace po = boost::program_options;
namespace fs = std::filesystem;
using Json = nlohmann::json;

// Files of the state directory this program owns (the services own the
// subdirectories, trustauthority/attestation.h).
constexpr const char* kConfigFile = "config.json";
constexpr const char* kSigningKeyFile = "signing-key.pem";
constexpr const char* kTokenKeyFile = "token-key.pub.pem";
constexpr int kConfigVersion = 1;
constexpr const char* kDefaultPcrs = "sha256:0,1,2,3,4,5,6,7";
constexpr const char* kDefaultPrimaryKeyName = "vcrypt-ta-primary";
// Our request bodies are a few KiB (a quote, a token, a ciphertext);
// anything much larger is refused before it is parsed.
constexpr size_t kMaxRequestBody = 64 * 1024;
// Worker threads of each service (see Serve).
constexpr size_t kWorkerThreads = 64;
constexpr size_t kPrimaryKeySize = 32;

constexpr const char* kUsage =
    R"(Usage: vcrypt-ta COMMAND ...   (docs/trusted-admin.md)

State directory administration:
  admin --state DIR init [--pcrs sha256:0,1,2,3,4,5,6,7]
  admin --state DIR tpm-ca add FILE
  admin --state DIR host add NAME [--ek-pub FILE]
  admin --state DIR host remove NAME
  admin --state DIR baseline add NAME --values FILE
  admin --state DIR baseline remove NAME
  admin --state DIR list [--json]
  admin primary-key create --kms HOST:PORT[,...] --kms-ca FILE
                           --kms-cert FILE --kms-key FILE [--name NAME]
Services (foreground; stop with SIGTERM or SIGINT):
  attestation-service --state DIR --listen HOST:PORT --tls-cert FILE
                      --tls-key FILE [--max-outstanding N (10000)]
                      [--rate-limit PER_SECOND (50; 0: off)]
                      [--rate-burst N (100)]
  key-provider-service --state DIR --listen HOST:PORT --tls-cert FILE
                       --tls-key FILE --provider-id ID
                       (--primary-key UID --kms HOST:PORT[,...] --kms-ca FILE
                        --kms-cert FILE --kms-key FILE
                        | --primary-key-file FILE)
  Both services also take [--max-client-connections N (16)]
  [--max-connection-seconds S (30)]: connections one client address (IPv6:
  its /64) may hold at once, and the longest any connection lives.

Exit codes: 0 ok, 1 internal, 2 usage, 4 permission denied, 5 not found,
6 exists, 8 key unavailable (KMS), 11 I/O error, 12 invalid argument,
13 crypto failure.
)";

Error UsageError(const std::string& msg) {
  return MakeError(ErrorCode::kUsage, msg + " (see 'vcrypt-ta --help')");
}

// --- command-line parsing --------------------------------------------------

struct Parsed {
  std::vector<std::string> words;
  po::variables_map vm;

  bool has(const char* name) const { return vm.count(name) > 0; }
  std::string get(const char* name) const {
    return has(name) ? vm[name].as<std::string>() : std::string();
  }
};

Result<Parsed> Parse(const std::vector<std::string>& args,
                     const po::options_description& opts,
                     const std::string& what) {
  Parsed p;
  po::options_description all;
  all.add(opts);
  all.add_options()("word", po::value<std::vector<std::string>>(&p.words));
  po::positional_options_description pos;
  pos.add("word", -1);
  try {
    po::store(po::command_line_parser(args).options(all).positional(pos).run(),
              p.vm);
    po::notify(p.vm);
  } catch (const po::error& e) {
    return UsageError(what + ": " + e.what());
  }
  return p;
}

Result<std::string> Need(const Parsed& p, const char* option,
                         const std::string& what) {
  std::string v = p.get(option);
  if (v.empty()) return UsageError(what + ": --" + option + " is required");
  return v;
}

// Only the options in `allowed` may be given to `what`.
Status OnlyOptions(const Parsed& p, const std::set<std::string>& allowed,
                   const std::string& what) {
  for (const auto& [name, value] : p.vm) {
    if (name == "word" || value.defaulted() || allowed.count(name)) continue;
    return UsageError(what + ": --" + name + " does not apply here");
  }
  return Status::Ok();
}

// Host and baseline names (the same rule as the service's, which makes
// them file names); checked here too so that the existence checks below
// never look at a path built from a bad name.
Status CheckName(const std::string& what, const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '.' ||
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS"
                             "TUVWXYZ0123456789._-") != std::string::npos)
    return MakeError(
        ErrorCode::kInvalidArgument,
        "invalid " + what + " name '" + name.substr(0, 64) +
            "' (1-64 of A-Z a-z 0-9 . _ -, not starting with '.')");
  return Status::Ok();
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

std::string OpensslError() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

// --- the state directory ---------------------------------------------------

Result<AttestationConfig> LoadConfig(const std::string& dir) {
  auto text = ReadFile(dir + "/" + kConfigFile);
  if (!text.ok()) {
    if (text.error().code == ErrorCode::kNotFound)
      return MakeError(ErrorCode::kNotFound,
                       dir +
                           " is not an initialised Trust Authority state "
                           "directory (run 'vcrypt-ta admin --state " +
                           dir + " init')");
    return std::move(text).error();
  }
  const std::string path = dir + "/" + kConfigFile;
  Json j = Json::parse(*text, nullptr, false);
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument, path + ": " + why);
  };
  if (!j.is_object()) return bad("not a JSON object");
  if (!j.contains("version") || !j["version"].is_number_integer() ||
      j["version"].get<int>() != kConfigVersion)
    return bad("unknown version (this program reads version " +
               std::to_string(kConfigVersion) + ")");
  if (!j.contains("pcrs") || !j["pcrs"].is_string()) return bad("no 'pcrs'");
  auto sel = ParsePcrSelection(j["pcrs"].get<std::string>());
  if (!sel.ok()) return bad(sel.error().message);
  AttestationConfig c;
  c.state_dir = dir;
  c.selection = std::move(sel).value();
  if (j.contains("issuer")) {
    if (!j["issuer"].is_string()) return bad("'issuer' is not a string");
    c.issuer = j["issuer"].get<std::string>();
  }
  if (j.contains("audience")) {
    if (!j["audience"].is_string()) return bad("'audience' is not a string");
    c.audience = j["audience"].get<std::string>();
  }
  return c;
}

Result<EcSigningKey> LoadSigningKey(const std::string& dir) {
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer pem,
                          ReadOwnerOnlyFile(dir + "/" + kSigningKeyFile,
                                            "token signing key", 16 * 1024));
  auto key = EcSigningKey::FromPrivatePem(pem);
  if (!key.ok())
    return MakeError(key.error().code,
                     dir + "/" + kSigningKeyFile + ": " + key.error().message);
  return key;
}

Result<AttestationService> OpenAttestation(const std::string& dir,
                                           size_t max_outstanding = 10000) {
  VCRYPT_ASSIGN_OR_RETURN(AttestationConfig config, LoadConfig(dir));
  config.max_outstanding = max_outstanding;
  VCRYPT_ASSIGN_OR_RETURN(EcSigningKey key, LoadSigningKey(dir));
  return AttestationService::Open(std::move(config), std::move(key));
}

// --- KMS -------------------------------------------------------------------

struct KmsOptions {
  std::string servers, ca, cert, key;
};

Result<std::unique_ptr<KmsCluster>> MakeCluster(const KmsOptions& o) {
  VCRYPT_ASSIGN_OR_RETURN(std::vector<KmsServer> servers,
                          ParseKmsServers(o.servers));
  TlsConfig c;
  c.ca_file = o.ca;
  c.cert_file = o.cert;
  c.key_file = o.key;
  c.connect_timeout = std::chrono::milliseconds(5000);
  c.io_timeout = std::chrono::milliseconds(10000);
  VCRYPT_ASSIGN_OR_RETURN(TlsClient client, TlsClient::Create(c));
  return std::make_unique<KmsCluster>(std::move(client), std::move(servers));
}

Result<KmsOptions> NeedKms(const Parsed& p, const std::string& what) {
  KmsOptions o;
  VCRYPT_ASSIGN_OR_RETURN(o.servers, Need(p, "kms", what));
  VCRYPT_ASSIGN_OR_RETURN(o.ca, Need(p, "kms-ca", what));
  VCRYPT_ASSIGN_OR_RETURN(o.cert, Need(p, "kms-cert", what));
  VCRYPT_ASSIGN_OR_RETURN(o.key, Need(p, "kms-key", what));
  return o;
}

void AddKmsOptions(po::options_description& d) {
  d.add_options()("kms", po::value<std::string>())(
      "kms-ca", po::value<std::string>())("kms-cert", po::value<std::string>())(
      "kms-key", po::value<std::string>());
}

// --- admin -----------------------------------------------------------------

class Admin {
 public:
  explicit Admin(std::ostream& out) : out_(out) {}
  Status Run(const std::vector<std::string>& args);

 private:
  Status Init(const Parsed& p, const std::string& dir);
  Status List(const std::string& dir);

  std::ostream& out_;
  bool json_ = false;
};

Status Admin::Run(const std::vector<std::string>& args) {
  po::options_description d;
  d.add_options()("state", po::value<std::string>())("json", "")(
      "pcrs", po::value<std::string>())("ek-pub", po::value<std::string>())(
      "values", po::value<std::string>())("name", po::value<std::string>());
  AddKmsOptions(d);
  VCRYPT_ASSIGN_OR_RETURN(Parsed p, Parse(args, d, "admin"));
  json_ = p.has("json");
  const auto& w = p.words;
  if (w.empty()) return UsageError("admin: missing subcommand");
  auto arity = [&](size_t n, const std::string& what) -> Status {
    if (w.size() != n)
      return UsageError("admin " + what + ": wrong number of arguments");
    return Status::Ok();
  };
  auto state = [&](const std::string& what) {
    return Need(p, "state", "admin " + what);
  };

  if (w[0] == "primary-key") {
    if (w.size() < 2 || w[1] != "create")
      return UsageError("admin primary-key: the subcommand is 'create'");
    VCRYPT_RETURN_IF_ERROR(arity(2, "primary-key create"));
    VCRYPT_RETURN_IF_ERROR(OnlyOptions(
        p, {"state", "json", "kms", "kms-ca", "kms-cert", "kms-key", "name"},
        "admin primary-key create"));
    VCRYPT_ASSIGN_OR_RETURN(KmsOptions kms,
                            NeedKms(p, "admin primary-key create"));
    std::string name = p.has("name") ? p.get("name") : kDefaultPrimaryKeyName;
    VCRYPT_ASSIGN_OR_RETURN(auto cluster, MakeCluster(kms));
    VCRYPT_ASSIGN_OR_RETURN(std::string uid, CreatePrimaryKey(*cluster, name));
    if (json_)
      out_ << Json{{"uid", uid}, {"name", name}}.dump() << "\n";
    else
      out_ << uid << "\n";
    return Status::Ok();
  }
  if (w[0] == "init") {
    VCRYPT_RETURN_IF_ERROR(arity(1, "init"));
    VCRYPT_RETURN_IF_ERROR(
        OnlyOptions(p, {"state", "json", "pcrs"}, "admin init"));
    VCRYPT_ASSIGN_OR_RETURN(std::string dir, state("init"));
    return Init(p, dir);
  }
  if (w[0] == "list") {
    VCRYPT_RETURN_IF_ERROR(arity(1, "list"));
    VCRYPT_RETURN_IF_ERROR(OnlyOptions(p, {"state", "json"}, "admin list"));
    VCRYPT_ASSIGN_OR_RETURN(std::string dir, state("list"));
    return List(dir);
  }
  if (w[0] != "tpm-ca" && w[0] != "host" && w[0] != "baseline")
    return UsageError("admin: unknown subcommand '" + w[0] + "'");
  if (w.size() < 2) return UsageError("admin " + w[0] + ": missing action");
  const std::string what = w[0] + " " + w[1];
  VCRYPT_ASSIGN_OR_RETURN(std::string dir, state(what));

  if (what == "tpm-ca add") {
    VCRYPT_RETURN_IF_ERROR(arity(3, what));
    VCRYPT_RETURN_IF_ERROR(OnlyOptions(p, {"state", "json"}, "admin " + what));
    VCRYPT_ASSIGN_OR_RETURN(AttestationService svc, OpenAttestation(dir));
    VCRYPT_ASSIGN_OR_RETURN(std::string pem, ReadFile(w[2]));
    auto st = svc.AddTpmCa(pem);
    if (!st.ok())
      return MakeError(st.error().code, w[2] + ": " + st.error().message);
    out_ << (json_ ? "{}\n" : "added TPM CA certificate " + w[2] + "\n");
    return Status::Ok();
  }
  if (what == "host add") {
    VCRYPT_RETURN_IF_ERROR(arity(3, what));
    VCRYPT_RETURN_IF_ERROR(
        OnlyOptions(p, {"state", "json", "ek-pub"}, "admin " + what));
    const std::string& host = w[2];
    VCRYPT_RETURN_IF_ERROR(CheckName("host", host));
    VCRYPT_ASSIGN_OR_RETURN(AttestationService svc, OpenAttestation(dir));
    // Re-adding would silently drop the host's enrolled AK: remove first.
    if (Exists(dir + "/hosts/" + host + ".json"))
      return MakeError(ErrorCode::kExists,
                       "host '" + host +
                           "' is already registered (remove it first to "
                           "change its EK)");
    std::optional<std::vector<uint8_t>> ek;
    if (p.has("ek-pub")) {
      VCRYPT_ASSIGN_OR_RETURN(std::string bytes, ReadFile(p.get("ek-pub")));
      auto norm = NormalizeEkPublic({bytes.begin(), bytes.end()});
      if (!norm.ok())
        return MakeError(norm.error().code,
                         p.get("ek-pub") + ": " + norm.error().message);
      ek = std::move(norm).value();
    }
    auto st = svc.AddHost(host, std::move(ek));
    if (!st.ok()) return st;
    out_ << (json_ ? "{}\n"
                   : "registered host " + host +
                         (p.has("ek-pub") ? " (EK pinned)\n"
                                          : " (EK certificate required)\n"));
    return Status::Ok();
  }
  if (what == "host remove") {
    VCRYPT_RETURN_IF_ERROR(arity(3, what));
    VCRYPT_RETURN_IF_ERROR(OnlyOptions(p, {"state", "json"}, "admin " + what));
    VCRYPT_ASSIGN_OR_RETURN(AttestationService svc, OpenAttestation(dir));
    VCRYPT_RETURN_IF_ERROR(svc.RemoveHost(w[2]));
    out_ << (json_ ? "{}\n" : "removed host " + w[2] + "\n");
    return Status::Ok();
  }
  if (what == "baseline add") {
    VCRYPT_RETURN_IF_ERROR(arity(3, what));
    VCRYPT_RETURN_IF_ERROR(
        OnlyOptions(p, {"state", "json", "values"}, "admin " + what));
    const std::string& name = w[2];
    VCRYPT_RETURN_IF_ERROR(CheckName("baseline", name));
    VCRYPT_ASSIGN_OR_RETURN(std::string values_file,
                            Need(p, "values", "admin " + what));
    VCRYPT_ASSIGN_OR_RETURN(AttestationService svc, OpenAttestation(dir));
    if (Exists(dir + "/baselines/" + name + ".json"))
      return MakeError(ErrorCode::kExists,
                       "baseline '" + name +
                           "' already exists (remove it first to replace it)");
    VCRYPT_ASSIGN_OR_RETURN(std::string text, ReadFile(values_file));
    auto values = ParseBaselineValues(text, svc.config().selection);
    if (!values.ok())
      return MakeError(values.error().code,
                       values_file + ": " + values.error().message);
    VCRYPT_RETURN_IF_ERROR(svc.AddBaseline(name, *values));
    out_ << (json_ ? "{}\n" : "added baseline " + name + "\n");
    return Status::Ok();
  }
  if (what == "baseline remove") {
    VCRYPT_RETURN_IF_ERROR(arity(3, what));
    VCRYPT_RETURN_IF_ERROR(OnlyOptions(p, {"state", "json"}, "admin " + what));
    VCRYPT_ASSIGN_OR_RETURN(AttestationService svc, OpenAttestation(dir));
    VCRYPT_RETURN_IF_ERROR(svc.RemoveBaseline(w[2]));
    out_ << (json_ ? "{}\n" : "removed baseline " + w[2] + "\n");
    return Status::Ok();
  }
  return UsageError("admin: unknown subcommand '" + what + "'");
}

Status Admin::Init(const Parsed& p, const std::string& dir) {
  VCRYPT_ASSIGN_OR_RETURN(
      PcrSelection sel,
      ParsePcrSelection(p.has("pcrs") ? p.get("pcrs") : kDefaultPcrs));
  bool created = false;
  struct stat st;
  if (lstat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode))
      return MakeError(ErrorCode::kExists,
                       dir + " exists and is not a directory");
    for (const char* f : {kConfigFile, kSigningKeyFile, kTokenKeyFile})
      if (Exists(dir + "/" + f))
        return MakeError(ErrorCode::kExists,
                         dir + " is already initialised (" + f + " exists)");
    // An empty directory (e.g. made by systemd's StateDirectory=) is
    // fine; anything else might be someone's data.
    std::error_code ec;
    if (!fs::is_empty(dir, ec) || ec)
      return MakeError(ErrorCode::kExists,
                       dir +
                           " is not empty: init needs a new or empty "
                           "directory");
  } else if (errno == ENOENT) {
    VCRYPT_RETURN_IF_ERROR(MakeDirs(dir, 0700));
    created = true;
  } else {
    return MakeError(ErrorCode::kIo,
                     "cannot access " + dir + ": " + std::strerror(errno));
  }
  // Nothing half-done: the directory was new or empty, so undoing is
  // removing what is in it (and it, if we made it).
  auto undo = [&](Error e) -> Error {
    std::error_code ec;
    if (created) {
      fs::remove_all(dir, ec);
    } else {
      for (const auto& entry : fs::directory_iterator(dir, ec))
        fs::remove_all(entry.path(), ec);
    }
    return e;
  };
  auto key = EcSigningKey::Generate();
  if (!key.ok()) return undo(std::move(key).error());
  auto pem = key->ToPrivatePem();
  if (!pem.ok()) return undo(std::move(pem).error());
  auto pub = key->ToPublicPem();
  if (!pub.ok()) return undo(std::move(pub).error());
  const std::string thumbprint = key->Thumbprint();
  if (auto w = WriteFileAtomic(dir + "/" + kSigningKeyFile, pem->span(),
                               AtomicWriteOptions{0600, {}});
      !w.ok())
    return undo(std::move(w).error());
  pem->Clear();
  if (auto w = WriteFileAtomic(dir + "/" + kTokenKeyFile, *pub,
                               AtomicWriteOptions{0644, {}});
      !w.ok())
    return undo(std::move(w).error());
  AttestationConfig c;
  c.state_dir = dir;
  c.selection = sel;
  // Creates the services' subdirectories.
  auto svc = AttestationService::Open(c, std::move(key).value());
  if (!svc.ok()) return undo(std::move(svc).error());
  // config.json last: it is what marks the directory as initialised.
  Json cfg = {{"version", kConfigVersion},
              {"pcrs", FormatPcrSelection(sel)},
              {"issuer", c.issuer},
              {"audience", c.audience},
              {"created", NowRfc3339()}};
  if (auto w = WriteFileAtomic(dir + "/" + kConfigFile, cfg.dump(2) + "\n",
                               AtomicWriteOptions{0644, {}});
      !w.ok())
    return undo(std::move(w).error());
  if (chmod(dir.c_str(), 0700) != 0)
    return undo(MakeError(ErrorCode::kIo, "cannot chmod 0700 " + dir + ": " +
                                              std::strerror(errno)));
  if (json_) {
    out_ << Json{{"state", dir},
                 {"pcrs", FormatPcrSelection(sel)},
                 {"token_key", dir + "/" + kTokenKeyFile},
                 {"token_key_thumbprint", thumbprint}}
                .dump()
         << "\n";
  } else {
    out_ << "initialised " << dir << " (PCR selection "
         << FormatPcrSelection(sel) << ")\n"
         << "token key: " << dir << "/" << kTokenKeyFile << " (kid "
         << thumbprint << ")\n";
  }
  return Status::Ok();
}

// Sorted names of the "*.<ext>" files in `dir`, without the extension.
std::vector<std::string> Names(const std::string& dir, const std::string& ext) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string n = e.path().filename().string();
    if (n.size() > ext.size() && n.ends_with(ext) && n[0] != '.')
      out.push_back(n.substr(0, n.size() - ext.size()));
  }
  std::sort(out.begin(), out.end());
  return out;
}

Status Admin::List(const std::string& dir) {
  VCRYPT_ASSIGN_OR_RETURN(AttestationConfig config, LoadConfig(dir));
  Json j = {{"pcrs", FormatPcrSelection(config.selection)},
            {"hosts", Json::array()},
            {"baselines", Json::array()},
            {"tpm_cas", Json::array()}};
  for (const auto& h : Names(dir + "/hosts", ".json")) {
    auto text = ReadFile(dir + "/hosts/" + h + ".json");
    Json rec = text.ok() ? Json::parse(*text, nullptr, false) : Json();
    if (!rec.is_object())
      return MakeError(ErrorCode::kIo, dir + "/hosts/" + h +
                                           ".json is not a JSON object "
                                           "(damaged state)");
    j["hosts"].push_back({{"name", h},
                          {"ek", rec.contains("ek") ? "pinned" : "certificate"},
                          {"enrolled", rec.contains("enrolled")}});
  }
  for (const auto& b : Names(dir + "/baselines", ".json"))
    j["baselines"].push_back(b);
  for (const auto& id : Names(dir + "/tpm-cas", ".pem")) {
    std::string subject = "?";
    if (auto pem = ReadFile(dir + "/tpm-cas/" + id + ".pem"); pem.ok()) {
      BioPtr bio(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())));
      X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
      if (cert) {
        OpensslCharPtr s(
            X509_NAME_oneline(X509_get_subject_name(cert.get()), nullptr, 0));
        if (s) subject = s.get();
      }
    }
    j["tpm_cas"].push_back({{"id", id}, {"subject", subject}});
  }
  if (json_) {
    out_ << j.dump() << "\n";
    return Status::Ok();
  }
  out_ << "PCR selection: " << j["pcrs"].get<std::string>() << "\n";
  out_ << "hosts:" << (j["hosts"].empty() ? " none" : "") << "\n";
  for (const auto& h : j["hosts"])
    out_ << "  " << h["name"].get<std::string>()
         << "  ek=" << h["ek"].get<std::string>()
         << "  enrolled=" << (h["enrolled"].get<bool>() ? "yes" : "no") << "\n";
  out_ << "baselines:" << (j["baselines"].empty() ? " none" : "") << "\n";
  for (const auto& b : j["baselines"])
    out_ << "  " << b.get<std::string>() << "\n";
  out_ << "TPM CAs:" << (j["tpm_cas"].empty() ? " none" : "") << "\n";
  for (const auto& c : j["tpm_cas"])
    out_ << "  " << c["id"].get<std::string>().substr(0, 16) << "  "
         << c["subject"].get<std::string>() << "\n";
  return Status::Ok();
}

// --- services ----------------------------------------------------------------

struct TlsFiles {
  std::string cert, key;
};

// Checks what the TLS server will load, so that a missing file is
// kNotFound with its name rather than a bare "TLS setup failed".
Status CheckReadable(const std::string& path, const std::string& what) {
  if (access(path.c_str(), R_OK) != 0)
    return MakeError(
        errno == ENOENT ? ErrorCode::kNotFound : ErrorCode::kPermissionDenied,
        "cannot read " + what + " " + path + ": " + std::strerror(errno));
  return Status::Ok();
}

// Binds `server` to `addr`, announces it and serves until `control` stops
// it (or the listener fails).
Status Serve(httplib::Server& server, const std::string& listen_text,
             const ListenAddress& addr, std::ostream& out,
             ServiceControl& control) {
  server.set_payload_max_length(kMaxRequestBody);
  // Slow clients: each read or write of a request may take 5 s at most
  // (cpp-httplib's default read timeout), an idle keep-alive connection
  // is closed after 2 s and serves at most 5 requests, so that one
  // client cannot hold a worker thread for long.
  server.set_read_timeout(5, 0);
  server.set_write_timeout(5, 0);
  server.set_keep_alive_timeout(2);
  server.set_keep_alive_max_count(5);
  // cpp-httplib serves a connection on one worker thread for its whole
  // life. Its default pool (8 on this kind of machine) was taken by a
  // nonce flood's connections while a host's waited in the queue: 27-43x
  // the idle attestation latency (bench/ta_flood.sh). Threads are cheap;
  // the ConnectionGuard bounds what one client may hold of them.
  server.new_task_queue = [] {
    return new httplib::ThreadPool(kWorkerThreads);
  };
  int port = -1;
  if (addr.port == 0) {
    port = server.bind_to_any_port(addr.host);
  } else if (server.bind_to_port(addr.host, addr.port)) {
    port = addr.port;
  }
  if (port <= 0)
    return MakeError(ErrorCode::kIo,
                     "cannot listen on " + listen_text +
                         " (address in use, not local, or not permitted)");
  const std::string shown =
      (addr.host.find(':') != std::string::npos ? "[" + addr.host + "]"
                                                : addr.host) +
      ":" + std::to_string(port);
  std::atomic<bool> done{false};
  std::thread t([&] {
    server.listen_after_bind();
    done = true;
    control.Notify();
  });
  // listen_after_bind sets is_running first thing; announce only then, so
  // a client that reads the line finds the server accepting.
  while (!server.is_running() && !done)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  if (!done) {
    out << "listening on " << shown << std::endl;
    if (control.on_listening) control.on_listening(shown);
  }
  control.WaitUntil([&] { return done.load(); });
  // stop() is a no-op unless the server is running: it is (or it ended).
  server.stop();
  t.join();
  if (!control.stopped())
    return MakeError(ErrorCode::kIo,
                     "the server on " + shown + " stopped unexpectedly");
  return Status::Ok();
}

// An httplib::SSLServer with our TLS policy and `guard`'s connection
// limits: TLS 1.2 or later, no
// compression or renegotiation, and keys never prompted for. The server
// certificate file may hold the chain after the leaf.
std::unique_ptr<httplib::SSLServer> MakeTlsServer(const TlsFiles& files,
                                                  ConnectionGuard& guard,
                                                  std::string* error) {
  auto server = std::make_unique<httplib::SSLServer>([&](SSL_CTX& ctx) {
    ERR_clear_error();
    if (!guard.Attach(&ctx)) {
      *error = "cannot hook the TLS context: " + OpensslError();
      return false;
    }
    SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(&ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                  SSL_OP_CIPHER_SERVER_PREFERENCE);
    // An encrypted key is a configuration error, not a terminal prompt.
    SSL_CTX_set_default_passwd_cb(
        &ctx, [](char*, int, int, void*) -> int { return 0; });
    if (SSL_CTX_use_certificate_chain_file(&ctx, files.cert.c_str()) != 1) {
      *error = "cannot load the TLS certificate " + files.cert + ": " +
               OpensslError();
      return false;
    }
    if (SSL_CTX_use_PrivateKey_file(&ctx, files.key.c_str(),
                                    SSL_FILETYPE_PEM) != 1) {
      // OpenSSL compares the key with the certificate while loading it.
      if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
        ERR_clear_error();
        *error = "the TLS key " + files.key +
                 " does not match the certificate " + files.cert;
        return false;
      }
      *error = "cannot load the TLS key " + files.key +
               " (unencrypted PEM expected): " + OpensslError();
      return false;
    }
    if (SSL_CTX_check_private_key(&ctx) != 1) {
      *error = "the TLS key " + files.key + " does not match the certificate " +
               files.cert;
      ERR_clear_error();
      return false;
    }
    return true;
  });
  return server;
}

struct ServiceArgs {
  std::string state;
  std::string listen_text;
  ListenAddress listen;
  TlsFiles tls;
  ConnectionLimits connections;
};

Result<ServiceArgs> NeedServiceArgs(const Parsed& p, const std::string& what) {
  if (!p.words.empty())
    return UsageError(what + ": unexpected argument '" + p.words[0] + "'");
  ServiceArgs a;
  VCRYPT_ASSIGN_OR_RETURN(a.state, Need(p, "state", what));
  VCRYPT_ASSIGN_OR_RETURN(a.listen_text, Need(p, "listen", what));
  VCRYPT_ASSIGN_OR_RETURN(a.tls.cert, Need(p, "tls-cert", what));
  VCRYPT_ASSIGN_OR_RETURN(a.tls.key, Need(p, "tls-key", what));
  auto l = ParseListenAddress(a.listen_text);
  if (!l.ok()) return UsageError(what + ": " + l.error().message);
  a.listen = std::move(l).value();
  VCRYPT_RETURN_IF_ERROR(CheckReadable(a.tls.cert, "TLS certificate"));
  VCRYPT_RETURN_IF_ERROR(CheckReadable(a.tls.key, "TLS key"));
  return a;
}

void AddServiceOptions(po::options_description& d) {
  d.add_options()("state", po::value<std::string>())(
      "listen", po::value<std::string>())("tls-cert", po::value<std::string>())(
      "tls-key", po::value<std::string>())("max-client-connections",
                                           po::value<std::string>())(
      "max-connection-seconds", po::value<std::string>());
}

// A decimal option value in [min, max], or its default when not given.
Result<double> NumberOption(const Parsed& p, const char* name, double dflt,
                            double min, double max, const std::string& what) {
  if (!p.has(name)) return dflt;
  const std::string v = p.get(name);
  size_t used = 0;
  double d = 0;
  try {
    d = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (v.empty() || used != v.size() || !(d >= min && d <= max))
    return UsageError(what + ": --" + name + " wants a number from " +
                      std::to_string(static_cast<long long>(min)) + " to " +
                      std::to_string(static_cast<long long>(max)) + ", not '" +
                      v.substr(0, 32) + "'");
  return d;
}

// --max-client-connections and --max-connection-seconds (both services).
Status ReadConnectionLimits(const Parsed& p, const std::string& what,
                            ConnectionLimits& limits) {
  VCRYPT_ASSIGN_OR_RETURN(
      double per_client,
      NumberOption(p, "max-client-connections", 16, 1, kWorkerThreads, what));
  VCRYPT_ASSIGN_OR_RETURN(
      double seconds,
      NumberOption(p, "max-connection-seconds", 30, 1, 3600, what));
  limits.per_client = static_cast<size_t>(per_client);
  limits.lifetime =
      std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  return Status::Ok();
}

Status AttestationServiceCmd(const std::vector<std::string>& args,
                             std::ostream& out, ServiceControl& control) {
  const std::string what = "attestation-service";
  po::options_description d;
  AddServiceOptions(d);
  d.add_options()("max-outstanding", po::value<std::string>())(
      "rate-limit", po::value<std::string>())("rate-burst",
                                              po::value<std::string>());
  VCRYPT_ASSIGN_OR_RETURN(Parsed p, Parse(args, d, what));
  VCRYPT_ASSIGN_OR_RETURN(ServiceArgs a, NeedServiceArgs(p, what));
  VCRYPT_RETURN_IF_ERROR(ReadConnectionLimits(p, what, a.connections));
  VCRYPT_ASSIGN_OR_RETURN(
      double max_outstanding,
      NumberOption(p, "max-outstanding", 10000, 1, 1e7, what));
  ClientRateLimit limit;
  VCRYPT_ASSIGN_OR_RETURN(limit.per_second,
                          NumberOption(p, "rate-limit", 50, 0, 1e6, what));
  VCRYPT_ASSIGN_OR_RETURN(limit.burst,
                          NumberOption(p, "rate-burst", 100, 1, 1e6, what));
  VCRYPT_ASSIGN_OR_RETURN(
      AttestationService svc,
      OpenAttestation(a.state, static_cast<size_t>(max_outstanding)));
  // Declared before the server: it must outlive the server's connections.
  ConnectionGuard guard(a.connections);
  std::string tls_error;
  auto server = MakeTlsServer(a.tls, guard, &tls_error);
  if (!server->is_valid())
    return MakeError(ErrorCode::kInvalidArgument, tls_error);
  AddAttestationRoutes(*server, svc, limit);
  return Serve(*server, a.listen_text, a.listen, out, control);
}

Status KeyProviderServiceCmd(const std::vector<std::string>& args,
                             std::ostream& out, ServiceControl& control) {
  const std::string what = "key-provider-service";
  po::options_description d;
  AddServiceOptions(d);
  AddKmsOptions(d);
  d.add_options()("provider-id", po::value<std::string>())(
      "primary-key", po::value<std::string>())("primary-key-file",
                                               po::value<std::string>());
  VCRYPT_ASSIGN_OR_RETURN(Parsed p, Parse(args, d, what));
  VCRYPT_ASSIGN_OR_RETURN(ServiceArgs a, NeedServiceArgs(p, what));
  VCRYPT_RETURN_IF_ERROR(ReadConnectionLimits(p, what, a.connections));
  VCRYPT_ASSIGN_OR_RETURN(std::string provider_id,
                          Need(p, "provider-id", what));
  VCRYPT_RETURN_IF_ERROR(CheckName("provider", provider_id));
  const bool from_file = p.has("primary-key-file");
  if (from_file == p.has("primary-key"))
    return UsageError(what + ": give exactly one of --primary-key UID (on a " +
                      "KMS) and --primary-key-file FILE");
  if (from_file && (p.has("kms") || p.has("kms-ca") || p.has("kms-cert") ||
                    p.has("kms-key")))
    return UsageError(what + ": --kms* options go with --primary-key, not " +
                      "--primary-key-file");
  KmsOptions kms;
  if (!from_file) {
    VCRYPT_ASSIGN_OR_RETURN(kms, NeedKms(p, what));
  }

  // Everything local first (cheap, and a typo should not cost a KMS
  // round trip); the primary key last.
  VCRYPT_ASSIGN_OR_RETURN(AttestationConfig config, LoadConfig(a.state));
  const std::string token_key_path = a.state + "/" + kTokenKeyFile;
  VCRYPT_ASSIGN_OR_RETURN(std::string token_pem, ReadFile(token_key_path));
  auto token_key = EcVerifyKey::FromPublicPem(token_pem);
  if (!token_key.ok())
    return MakeError(token_key.error().code,
                     token_key_path + ": " + token_key.error().message);
  // Declared before the server: it must outlive the server's connections.
  ConnectionGuard guard(a.connections);
  std::string tls_error;
  auto server = MakeTlsServer(a.tls, guard, &tls_error);
  if (!server->is_valid())
    return MakeError(ErrorCode::kInvalidArgument, tls_error);

  SecureBuffer primary;
  if (from_file) {
    const std::string f = p.get("primary-key-file");
    VCRYPT_ASSIGN_OR_RETURN(
        primary, ReadOwnerOnlyFile(f, "primary key file", kPrimaryKeySize));
    if (primary.size() != kPrimaryKeySize)
      return MakeError(ErrorCode::kInvalidArgument,
                       "primary key file " + f + " must hold exactly " +
                           std::to_string(kPrimaryKeySize) + " raw bytes");
  } else {
    VCRYPT_ASSIGN_OR_RETURN(auto cluster, MakeCluster(kms));
    VCRYPT_ASSIGN_OR_RETURN(primary,
                            FetchPrimaryKey(*cluster, p.get("primary-key")));
  }
  // vcryptd's rule for its KEK cache: key memory that may be swapped out
  // is refused rather than tolerated.
  if (!primary.locked())
    return MakeError(ErrorCode::kPermissionDenied,
                     "cannot lock the primary key in memory (raise "
                     "RLIMIT_MEMLOCK, e.g. LimitMEMLOCK= in the unit)");
  KpsConfig kc;
  kc.state_dir = a.state;
  kc.provider_id = provider_id;
  kc.policy.issuer = config.issuer;
  kc.policy.audience = config.audience;
  VCRYPT_ASSIGN_OR_RETURN(
      KeyProviderService kps,
      KeyProviderService::Open(std::move(kc), std::move(token_key).value(),
                               std::move(primary)));
  std::mutex mu;
  AddKpsRoutes(*server, kps, mu);
  return Serve(*server, a.listen_text, a.listen, out, control);
}

}  // namespace

// --- ServiceControl ----------------------------------------------------------

void ServiceControl::Stop() {
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
}

void ServiceControl::Notify() {
  // Taking the lock orders the caller's state change before the waiter's
  // re-check (no lost wake-up).
  { std::lock_guard lock(mu_); }
  cv_.notify_all();
}

bool ServiceControl::stopped() {
  std::lock_guard lock(mu_);
  return stopped_;
}

void ServiceControl::WaitUntil(const std::function<bool()>& done) {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return stopped_ || done(); });
}

// --- exposed pieces
// ------------------------------------------------------------

Result<PcrSelection> ParsePcrSelection(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "bad PCR selection '" + std::string(text.substr(0, 80)) +
                         "': " + why + " (e.g. sha256:0,1,2,3,4,5,6,7)");
  };
  size_t colon = text.find(':');
  if (colon == std::string_view::npos) return bad("no bank");
  if (text.substr(0, colon) != "sha256")
    return bad("only the sha256 bank is supported");
  std::string_view list = text.substr(colon + 1);
  std::set<uint32_t> pcrs;
  auto number = [](std::string_view s, uint32_t* v) {
    if (s.empty() || s.size() > 2) return false;
    *v = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      *v = *v * 10 + static_cast<uint32_t>(c - '0');
    }
    return *v <= 23;
  };
  size_t pos = 0;
  while (pos <= list.size()) {
    size_t comma = list.find(',', pos);
    if (comma == std::string_view::npos) comma = list.size();
    std::string_view item = list.substr(pos, comma - pos);
    size_t dash = item.find('-');
    uint32_t lo, hi;
    if (dash == std::string_view::npos) {
      if (!number(item, &lo)) return bad("PCRs are numbers 0-23");
      hi = lo;
    } else if (!number(item.substr(0, dash), &lo) ||
               !number(item.substr(dash + 1), &hi) || lo > hi) {
      return bad("bad range '" + std::string(item) + "'");
    }
    for (uint32_t i = lo; i <= hi; ++i)
      if (!pcrs.insert(i).second)
        return bad("PCR " + std::to_string(i) + " given twice");
    pos = comma + 1;
  }
  return PcrSelection{TPM2_ALG_SHA256, {pcrs.begin(), pcrs.end()}};
}

std::string FormatPcrSelection(const PcrSelection& s) {
  std::string out = s.hash == TPM2_ALG_SHA256 ? "sha256:" : "?:";
  for (size_t i = 0; i < s.pcrs.size(); ++i)
    out += (i ? "," : "") + std::to_string(s.pcrs[i]);
  return out;
}

Result<std::vector<std::vector<uint8_t>>> ParseBaselineValues(
    std::string_view text, const PcrSelection& selection) {
  std::vector<std::vector<uint8_t>> values;
  size_t line_no = 0, pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line[0])))
      line.remove_prefix(1);
    while (!line.empty() &&
           std::isspace(static_cast<unsigned char>(line.back())))
      line.remove_suffix(1);
    if (line.empty() || line[0] == '#') continue;
    const std::string where = "line " + std::to_string(line_no);
    if (line.size() % 2 != 0)
      return MakeError(ErrorCode::kInvalidArgument,
                       where + ": not a hex digest (odd length)");
    auto decoded = HexDecode(line);
    if (!decoded.ok())
      return MakeError(ErrorCode::kInvalidArgument,
                       where + ": not a hex digest");
    std::vector<uint8_t> v = std::move(decoded).value();
    if (v.size() != 32)
      return MakeError(ErrorCode::kInvalidArgument,
                       where + ": " + std::to_string(v.size()) +
                           " bytes; a sha256 PCR value has 32");
    values.push_back(std::move(v));
  }
  if (values.size() != selection.pcrs.size())
    return MakeError(
        ErrorCode::kInvalidArgument,
        std::to_string(values.size()) + " values for the " +
            std::to_string(selection.pcrs.size()) + " PCRs of the selection " +
            FormatPcrSelection(selection) + " (one per line, in that order)");
  return values;
}

Result<ListenAddress> ParseListenAddress(std::string_view text) {
  auto bad = [&] {
    return MakeError(ErrorCode::kInvalidArgument,
                     "bad listen address '" + std::string(text.substr(0, 80)) +
                         "' (use HOST:PORT or [IPV6]:PORT; port 0 = any)");
  };
  ListenAddress a;
  size_t colon;
  if (!text.empty() && text[0] == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() ||
        text[close + 1] != ':')
      return bad();
    a.host = std::string(text.substr(1, close - 1));
    colon = close + 1;
  } else {
    colon = text.rfind(':');
    if (colon == std::string_view::npos || text.find(':') != colon)
      return bad();
    a.host = std::string(text.substr(0, colon));
  }
  std::string_view port = text.substr(colon + 1);
  if (a.host.empty() || port.empty() || port.size() > 5) return bad();
  unsigned p = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return bad();
    p = p * 10 + static_cast<unsigned>(c - '0');
  }
  if (p > 65535) return bad();
  a.port = static_cast<uint16_t>(p);
  for (char c : a.host)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' ||
          c == ':' || c == '_'))
      return bad();
  return a;
}

Result<std::vector<uint8_t>> NormalizeEkPublic(std::vector<uint8_t> bytes) {
  auto first = ParseTpm2bPublic(bytes);
  if (first.ok()) return bytes;
  if (!bytes.empty() && bytes.size() <= 0xffff) {
    std::vector<uint8_t> sized = {static_cast<uint8_t>(bytes.size() >> 8),
                                  static_cast<uint8_t>(bytes.size() & 0xff)};
    sized.insert(sized.end(), bytes.begin(), bytes.end());
    if (ParseTpm2bPublic(sized).ok()) return sized;
  }
  return MakeError(ErrorCode::kInvalidArgument,
                   "neither a TPM2B_PUBLIC nor a TPMT_PUBLIC (" +
                       first.error().message + ")");
}

Result<SecureBuffer> ReadOwnerOnlyFile(const std::string& path,
                                       const std::string& what,
                                       size_t max_size) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid())
    return MakeError(
        errno == ENOENT   ? ErrorCode::kNotFound
        : errno == EACCES ? ErrorCode::kPermissionDenied
                          : ErrorCode::kIo,
        "cannot open " + what + " " + path + ": " + std::strerror(errno));
  struct stat st;
  if (fstat(fd.get(), &st) != 0)
    return MakeError(ErrorCode::kIo, "cannot stat " + what + " " + path + ": " +
                                         std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    return MakeError(ErrorCode::kInvalidArgument,
                     what + " " + path + " is not a regular file");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o",
                  static_cast<unsigned>(st.st_mode & 07777));
    return MakeError(ErrorCode::kPermissionDenied,
                     what + " " + path + " has mode " + mode +
                         ": it must be readable by its owner only (chmod "
                         "600)");
  }
  SecureBuffer buf(max_size + 1);
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd.get(), buf.data() + got, buf.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0)
      return MakeError(ErrorCode::kIo, "cannot read " + what + " " + path +
                                           ": " + std::strerror(errno));
    if (r == 0) break;
    got += static_cast<size_t>(r);
    if (got == buf.size())
      return MakeError(ErrorCode::kInvalidArgument,
                       what + " " + path + " is too large");
  }
  buf.Truncate(got);
  if (buf.empty())
    return MakeError(ErrorCode::kInvalidArgument,
                     what + " " + path + " is empty");
  return buf;
}

Result<SecureBuffer> FetchPrimaryKey(KmsCluster& cluster,
                                     const std::string& uid) {
  auto fail = [&](const Error& e) {
    return MakeError(e.code, "cannot fetch the primary key '" + uid +
                                 "' from the KMS: " + e.message);
  };
  if (uid.empty())
    return MakeError(ErrorCode::kInvalidArgument, "empty primary key UID");
  kmip::RequestItem get = kmip::MakeGet(uid);
  auto ex = cluster.Execute({&get, 1});
  if (!ex.ok()) return fail(ex.error());
  auto key = kmip::ParseGetAes256((*ex)->matched[0], uid);
  if (!key.ok()) return fail(key.error());
  return key;
}

Result<std::string> CreatePrimaryKey(KmsCluster& cluster,
                                     const std::string& name) {
  // The same sequence as StandardProvider::CreateKek: Create, then
  // Activate + Get (the Get proves the key is usable as a primary key).
  kmip::RequestItem create = kmip::MakeCreateAes256(name);
  auto ex = cluster.Execute({&create, 1});
  if (!ex.ok())
    return MakeError(ex.error().code,
                     "cannot create the primary key: " + ex.error().message);
  auto uid = kmip::ParseCreate((*ex)->matched[0]);
  if (!uid.ok())
    return MakeError(uid.error().code,
                     "cannot create the primary key: " + uid.error().message);
  kmip::RequestItem next[] = {kmip::MakeActivate(*uid), kmip::MakeGet(*uid)};
  auto ex2 = cluster.Execute(next);
  Status st;
  if (!ex2.ok()) {
    st = ex2.error();
  } else if (auto act = kmip::ParseActivate((*ex2)->matched[0], *uid);
             !act.ok()) {
    st = std::move(act);
  } else if (auto key = kmip::ParseGetAes256((*ex2)->matched[1], *uid);
             !key.ok()) {
    st = key.error();
  }
  if (!st.ok()) {
    // No orphan key on the KMS (an active key needs a Revoke first).
    kmip::RequestItem cleanup[] = {
        kmip::MakeRevoke(*uid,
                         kmip::RevocationReasonCode::kCessationOfOperation),
        kmip::MakeDestroy(*uid)};
    (void)cluster.Execute(cleanup, /*continue_on_error=*/true);
    return MakeError(st.error().code, "cannot activate the new primary key " +
                                          *uid + ": " + st.error().message);
  }
  return uid;
}

int RunTaTool(int argc, const char* const* argv, std::ostream& out,
              std::ostream& err, ServiceControl* control) {
  std::vector<std::string> args;
  for (int i = 2; i < argc; ++i) args.emplace_back(argv[i]);
  const std::string cmd = argc >= 2 ? argv[1] : "";
  ServiceControl never_stopped;
  ServiceControl& ctl = control != nullptr ? *control : never_stopped;
  if (cmd == "--help" || cmd == "-h" || cmd == "help" ||
      std::find(args.begin(), args.end(), "--help") != args.end()) {
    out << kUsage;
    return 0;
  }
  Status st;
  if (cmd.empty()) {
    st = UsageError("no command given");
  } else if (cmd == "admin") {
    st = Admin(out).Run(args);
  } else if (cmd == "attestation-service") {
    st = AttestationServiceCmd(args, out, ctl);
  } else if (cmd == "key-provider-service") {
    st = KeyProviderServiceCmd(args, out, ctl);
  } else {
    st = UsageError("unknown command '" + cmd + "'");
  }
  if (st.ok()) return 0;
  err << "vcrypt-ta: " << st.error().message << std::endl;
  return static_cast<int>(st.error().code);
}

}  // namespace vcrypt
