// `vcrypt-ta admin ...`: creates and edits the database the services read
// (trustauthority/store.h; docs/trusted-admin.md).

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <span>

#include "common/atomic_file.h"
#include "common/clock.h"
#include "common/hex.h"
#include "common/random.h"
#include "trustauthority/attestation.h"
#include "trustauthority/eventlog.h"
#include "trustauthority/eventlog_policy.h"
#include "trustauthority/store.h"
#include "trustauthority/ta_tool_internal.h"

namespace vcrypt::ta_tool_internal {
namespace {

int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// "90s", "15m", "48h", "7d" (a bare number: seconds), 1 s to 366 days.
Result<int64_t> ParseDurationSeconds(const std::string& text) {
  auto bad = [&] {
    return UsageError(
        "--expires-in '" + text.substr(0, 32) +
        "' is not a duration from 1s to 366d (e.g. 90m, 48h, 7d)");
  };
  if (text.empty() || text.size() > 12) return bad();
  int64_t unit = 1;
  std::string digits = text;
  switch (text.back()) {
    case 's':
      unit = 1;
      break;
    case 'm':
      unit = 60;
      break;
    case 'h':
      unit = 3600;
      break;
    case 'd':
      unit = 86400;
      break;
    default:
      unit = 0;
  }
  if (unit != 0)
    digits.pop_back();
  else
    unit = 1;
  if (digits.empty() ||
      digits.find_first_not_of("0123456789") != std::string::npos)
    return bad();
  const int64_t n = std::stoll(digits);
  if (n < 1 || n > 366 * 86400 / unit) return bad();
  return n * unit;
}

std::string Rfc3339(int64_t unix_seconds) {
  const time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// A policy (eventlog_policy.h) that admits exactly the boot a host's event
// log records, for the PCRs of `selection`: each PCR with events allows
// their digests (with their event types); a PCR without events must keep
// its replayed value. The starting point for an admin, who adds the
// digests of other approved versions (or stages them as their own
// baseline with --expires-in).
Result<Json> PolicyFromLog(const std::string& path,
                           const PcrSelection& selection) {
  VCRYPT_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  if (text.size() > kMaxEventLogSize)
    return MakeError(ErrorCode::kInvalidArgument,
                     path + ": larger than an event log may be (" +
                         std::to_string(kMaxEventLogSize) + " bytes)");
  auto log = ParseEventLog(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  if (!log.ok())
    return MakeError(log.error().code, path + ": " + log.error().message);
  std::vector<uint32_t> pcrs(selection.pcrs.begin(), selection.pcrs.end());
  auto values = ReplayEventLog(*log, selection.hash, pcrs);
  if (!values.ok())
    return MakeError(values.error().code, path + ": " + values.error().message);
  Json rules = Json::object();
  for (size_t i = 0; i < pcrs.size(); ++i) {
    Json allow = Json::array();
    for (const auto& e : log->events) {
      if (e.pcr != pcrs[i] || e.type == kEvNoAction) continue;
      for (const auto& d : e.digests)
        if (d.alg == selection.hash)
          allow.push_back({{"type", EventTypeName(e.type)},
                           {"digest", HexEncode(d.digest)}});
    }
    rules[std::to_string(pcrs[i])] =
        allow.empty() ? Json{{"value", HexEncode((*values)[i])}}
                      : Json{{"allow", allow}};
  }
  return Json{{"policy", {{"bank", "sha256"}, {"pcrs", rules}}}};
}

class Admin {
 public:
  explicit Admin(std::ostream& out) : out_(out) {}
  Status Run(const std::vector<std::string>& args);

 private:
  Status Init(const Parsed& p);
  Status List(const std::string& url);
  Status ImportFiles(const std::string& dir, const std::string& url);

  std::ostream& out_;
  bool json_ = false;
};

Status Admin::Run(const std::vector<std::string>& args) {
  po::options_description d;
  d.add_options()("state", po::value<std::string>())(
      "db", po::value<std::string>())("json", "")(
      "pcrs", po::value<std::string>())("ek-pub", po::value<std::string>())(
      "values", po::value<std::string>())("name", po::value<std::string>())(
      "policy", po::value<std::string>())(
      "expires-in", po::value<std::string>())("log", po::value<std::string>());
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
  auto db = [&](const std::string& what) {
    return StoreUrlOf(p, "admin " + what);
  };

  if (w[0] == "primary-key") {
    if (w.size() < 2 || w[1] != "create")
      return UsageError("admin primary-key: the subcommand is 'create'");
    VCRYPT_RETURN_IF_ERROR(arity(2, "primary-key create"));
    VCRYPT_RETURN_IF_ERROR(OnlyOptions(
        p,
        {"state", "db", "json", "kms", "kms-ca", "kms-cert", "kms-key", "name"},
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
        OnlyOptions(p, {"state", "db", "json", "pcrs"}, "admin init"));
    return Init(p);
  }
  if (w[0] == "list") {
    VCRYPT_RETURN_IF_ERROR(arity(1, "list"));
    VCRYPT_RETURN_IF_ERROR(
        OnlyOptions(p, {"state", "db", "json"}, "admin list"));
    VCRYPT_ASSIGN_OR_RETURN(std::string url, db("list"));
    return List(url);
  }
  if (w[0] == "import-files") {
    VCRYPT_RETURN_IF_ERROR(arity(1, "import-files"));
    VCRYPT_RETURN_IF_ERROR(
        OnlyOptions(p, {"state", "db", "json"}, "admin import-files"));
    VCRYPT_ASSIGN_OR_RETURN(std::string dir,
                            Need(p, "state", "admin import-files"));
    VCRYPT_RETURN_IF_ERROR(Need(p, "db", "admin import-files"));
    VCRYPT_ASSIGN_OR_RETURN(std::string url,
                            StoreUrlOf(p, "admin import-files"));
    return ImportFiles(dir, url);
  }
  if (w[0] != "tpm-ca" && w[0] != "host" && w[0] != "baseline")
    return UsageError("admin: unknown subcommand '" + w[0] + "'");
  if (w.size() < 2) return UsageError("admin " + w[0] + ": missing action");
  const std::string what = w[0] + " " + w[1];
  VCRYPT_ASSIGN_OR_RETURN(std::string url, db(what));

  if (what == "tpm-ca add") {
    VCRYPT_RETURN_IF_ERROR(arity(3, what));
    VCRYPT_RETURN_IF_ERROR(
        OnlyOptions(p, {"state", "db", "json"}, "admin " + what));
    VCRYPT_ASSIGN_OR_RETURN(auto store, OpenExistingStore(url));
    VCRYPT_ASSIGN_OR_RETURN(AttestationService svc, OpenAttestation(store));
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
        OnlyOptions(p, {"state", "db", "json", "ek-pub"}, "admin " + what));
    const std::string& host = w[2];
    VCRYPT_RETURN_IF_ERROR(CheckName("host", host));
    VCRYPT_ASSIGN_OR_RETURN(auto store, OpenExistingStore(url));
    VCRYPT_ASSIGN_OR_RETURN(AttestationService svc, OpenAttestation(store));
    // Re-adding would silently drop the host's enrolled AK: remove first.
    VCRYPT_ASSIGN_OR_RETURN(std::optional<HostRow> existing,
                            store->GetHost(host));
    if (existing)
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
    VCRYPT_RETURN_IF_ERROR(
        OnlyOptions(p, {"state", "db", "json"}, "admin " + what));
    VCRYPT_ASSIGN_OR_RETURN(auto store, OpenExistingStore(url));
    VCRYPT_ASSIGN_OR_RETURN(AttestationService svc, OpenAttestation(store));
    VCRYPT_RETURN_IF_ERROR(svc.RemoveHost(w[2]));
    out_ << (json_ ? "{}\n" : "removed host " + w[2] + "\n");
    return Status::Ok();
  }
  if (what == "baseline add") {
    VCRYPT_RETURN_IF_ERROR(arity(3, what));
    VCRYPT_RETURN_IF_ERROR(OnlyOptions(
        p, {"state", "db", "json", "values", "policy", "expires-in"},
        "admin " + what));
    const std::string& name = w[2];
    VCRYPT_RETURN_IF_ERROR(CheckName("baseline", name));
    if (p.has("values") == p.has("policy"))
      return UsageError("admin " + what +
                        ": give --values FILE (PCR values) or --policy FILE "
                        "(an event-log policy), not both");
    std::optional<int64_t> expires;
    if (p.has("expires-in")) {
      VCRYPT_ASSIGN_OR_RETURN(int64_t secs,
                              ParseDurationSeconds(p.get("expires-in")));
      expires = NowUnix() + secs;
    }
    VCRYPT_ASSIGN_OR_RETURN(auto store, OpenExistingStore(url));
    VCRYPT_ASSIGN_OR_RETURN(AttestationService svc, OpenAttestation(store));
    VCRYPT_ASSIGN_OR_RETURN(std::optional<BaselineRow> existing,
                            store->GetBaseline(name, NowUnix()));
    if (existing)
      return MakeError(ErrorCode::kExists,
                       "baseline '" + name +
                           "' already exists (remove it first to replace it)");
    std::string body;
    if (p.has("values")) {
      const std::string values_file = p.get("values");
      VCRYPT_ASSIGN_OR_RETURN(std::string text, ReadFile(values_file));
      auto values = ParseBaselineValues(text, svc.config().selection);
      if (!values.ok())
        return MakeError(values.error().code,
                         values_file + ": " + values.error().message);
      Json vals = Json::array();
      for (const auto& v : *values) vals.push_back(HexEncode(v));
      body = Json{{"values", vals}}.dump();
    } else {
      // A policy document (trustauthority/eventlog_policy.h), checked
      // against this Trust Authority's PCR selection before it is stored.
      const std::string policy_file = p.get("policy");
      VCRYPT_ASSIGN_OR_RETURN(std::string text, ReadFile(policy_file));
      Json j = Json::parse(text, nullptr, false);
      if (j.is_discarded() || !j.is_object())
        return MakeError(ErrorCode::kInvalidArgument,
                         policy_file + ": not a JSON object");
      if (!j.contains("policy")) j = Json{{"policy", j}};  // the bare policy
      body = j.dump();
      auto st = ValidateBaselineDocument(body, svc.config().selection);
      if (!st.ok())
        return MakeError(st.error().code,
                         policy_file + ": " + st.error().message);
    }
    VCRYPT_RETURN_IF_ERROR(
        store->PutBaseline({name, body, NowUnix(), expires}, false, NowUnix()));
    if (json_) {
      out_ << Json{{"name", name},
                   {"kind", p.has("policy") ? "policy" : "values"},
                   {"expires_at", expires ? Json(*expires) : Json()}}
                  .dump()
           << "\n";
    } else {
      out_ << "added baseline " << name
           << (expires ? " (expires " + Rfc3339(*expires) + ")" : "") << "\n";
    }
    return Status::Ok();
  }
  if (what == "baseline policy-from-log") {
    VCRYPT_RETURN_IF_ERROR(arity(2, what));
    VCRYPT_RETURN_IF_ERROR(
        OnlyOptions(p, {"state", "db", "json", "log"}, "admin " + what));
    if (!p.has("log")) return UsageError("admin " + what + " needs --log FILE");
    VCRYPT_ASSIGN_OR_RETURN(auto store, OpenExistingStore(url));
    VCRYPT_ASSIGN_OR_RETURN(AttestationConfig config, LoadConfig(store));
    VCRYPT_ASSIGN_OR_RETURN(Json policy,
                            PolicyFromLog(p.get("log"), config.selection));
    out_ << policy.dump(2) << "\n";
    return Status::Ok();
  }
  if (what == "baseline remove") {
    VCRYPT_RETURN_IF_ERROR(arity(3, what));
    VCRYPT_RETURN_IF_ERROR(
        OnlyOptions(p, {"state", "db", "json"}, "admin " + what));
    VCRYPT_ASSIGN_OR_RETURN(auto store, OpenExistingStore(url));
    VCRYPT_ASSIGN_OR_RETURN(AttestationService svc, OpenAttestation(store));
    VCRYPT_RETURN_IF_ERROR(svc.RemoveBaseline(w[2]));
    out_ << (json_ ? "{}\n" : "removed baseline " + w[2] + "\n");
    return Status::Ok();
  }
  return UsageError("admin: unknown subcommand '" + what + "'");
}

Status Admin::Init(const Parsed& p) {
  VCRYPT_ASSIGN_OR_RETURN(std::string url, StoreUrlOf(p, "admin init"));
  VCRYPT_ASSIGN_OR_RETURN(
      PcrSelection sel,
      ParsePcrSelection(p.has("pcrs") ? p.get("pcrs") : kDefaultPcrs));
  // What init made, removed again if it fails: nothing half-done.
  const bool by_state = !p.has("db");
  const std::string dir = p.get("state");
  bool created_dir = false;
  std::string created_file;
  if (by_state) {
    struct stat st;
    if (lstat(dir.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode))
        return MakeError(ErrorCode::kExists,
                         dir + " exists and is not a directory");
      for (const char* f : {kDatabaseFile, kConfigFile, kSigningKeyFile})
        if (Exists(dir + "/" + f))
          return MakeError(
              ErrorCode::kExists,
              dir + " is already initialised (" + f + " exists)" +
                  (std::string(f) == kDatabaseFile
                       ? ""
                       : "; a file store of an older version: move it "
                         "into a database with 'admin import-files'"));
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
      created_dir = true;
    } else {
      return MakeError(ErrorCode::kIo,
                       "cannot access " + dir + ": " + std::strerror(errno));
    }
  }
  if (!IsPostgresUrl(url)) {
    const std::string path = url.substr(std::string_view("sqlite:").size());
    if (!Exists(path)) created_file = path;
  }
  auto undo = [&](Error e) -> Error {
    std::error_code ec;
    if (created_dir) {
      fs::remove_all(dir, ec);
    } else if (by_state) {
      for (const auto& entry : fs::directory_iterator(dir, ec))
        fs::remove_all(entry.path(), ec);
    } else if (!created_file.empty()) {
      for (const char* suffix : {"", "-wal", "-shm", "-journal"})
        fs::remove(created_file + suffix, ec);
    }
    return e;
  };
  auto store = OpenTaStore(url);
  if (!store.ok()) return undo(std::move(store).error());
  auto key = EcSigningKey::Generate();
  if (!key.ok()) return undo(std::move(key).error());
  auto pem = key->ToPrivatePem();
  if (!pem.ok()) return undo(std::move(pem).error());
  auto pub = key->ToPublicPem();
  if (!pub.ok()) return undo(std::move(pub).error());
  SigningKeyInfo info;
  info.kid = key->Thumbprint();
  info.public_pem = *pub;
  info.state = "active";
  info.created_at = NowUnix();
  AttestationConfig c;
  const std::map<std::string, std::string> settings = {
      {"pcrs", FormatPcrSelection(sel)},
      {"issuer", c.issuer},
      {"audience", c.audience},
      {"created", NowRfc3339()}};
  auto nonce_key = RandomKey(32);
  if (!nonce_key.ok()) return undo(std::move(nonce_key).error());
  // One transaction: a database is initialised completely or not at all.
  if (auto st =
          (*store)->Initialise(settings, info, pem->span(), nonce_key->span());
      !st.ok()) {
    // Someone else's initialised database is left alone.
    if (st.error().code == ErrorCode::kExists && created_file.empty() &&
        !created_dir)
      return std::move(st).error();
    return undo(std::move(st).error());
  }
  pem->Clear();
  if (by_state && chmod(dir.c_str(), 0700) != 0)
    return undo(MakeError(ErrorCode::kIo, "cannot chmod 0700 " + dir + ": " +
                                              std::strerror(errno)));
  if (json_) {
    Json j = {{"db", url},
              {"pcrs", FormatPcrSelection(sel)},
              {"token_key_thumbprint", info.kid}};
    if (by_state) j["state"] = dir;
    out_ << j.dump() << "\n";
  } else {
    out_ << "initialised " << url << " (PCR selection "
         << FormatPcrSelection(sel) << ")\n"
         << "token signing key: kid " << info.kid << " (in the database)\n";
  }
  return Status::Ok();
}

Status Admin::List(const std::string& url) {
  VCRYPT_ASSIGN_OR_RETURN(auto store, OpenExistingStore(url));
  VCRYPT_ASSIGN_OR_RETURN(AttestationConfig config, LoadConfig(store));
  Json j = {{"pcrs", FormatPcrSelection(config.selection)},
            {"hosts", Json::array()},
            {"baselines", Json::array()},
            {"tpm_cas", Json::array()},
            {"signing_keys", Json::array()}};
  VCRYPT_ASSIGN_OR_RETURN(std::vector<HostRow> hosts, store->ListHosts());
  for (const auto& h : hosts)
    j["hosts"].push_back({{"name", h.name},
                          {"ek", h.ek ? "pinned" : "certificate"},
                          {"enrolled", h.enrolled_ak.has_value()}});
  VCRYPT_ASSIGN_OR_RETURN(std::vector<BaselineRow> baselines,
                          store->ListBaselines(NowUnix()));
  for (const auto& b : baselines) {
    Json body = Json::parse(b.body, nullptr, false);
    const bool policy = body.is_object() && body.contains("policy");
    j["baselines"].push_back(
        {{"name", b.name},
         {"kind", policy ? "policy" : "values"},
         {"expires_at", b.expires_at ? Json(*b.expires_at) : Json()}});
  }
  VCRYPT_ASSIGN_OR_RETURN(std::vector<TpmCaRow> cas, store->ListTpmCas());
  for (const auto& ca : cas) {
    std::string subject = "?";
    BioPtr bio(BIO_new_mem_buf(ca.pem.data(), static_cast<int>(ca.pem.size())));
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert) {
      OpensslCharPtr s(
          X509_NAME_oneline(X509_get_subject_name(cert.get()), nullptr, 0));
      if (s) subject = s.get();
    }
    j["tpm_cas"].push_back({{"id", ca.id}, {"subject", subject}});
  }
  VCRYPT_ASSIGN_OR_RETURN(std::vector<SigningKeyInfo> keys,
                          store->SigningKeys());
  for (const auto& k : keys)
    j["signing_keys"].push_back(
        {{"kid", k.kid}, {"state", k.state}, {"created_at", k.created_at}});
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
    out_ << "  " << b["name"].get<std::string>() << "  "
         << b["kind"].get<std::string>()
         << (b["expires_at"].is_number()
                 ? "  expires " + Rfc3339(b["expires_at"].get<int64_t>())
                 : std::string())
         << "\n";
  out_ << "TPM CAs:" << (j["tpm_cas"].empty() ? " none" : "") << "\n";
  for (const auto& c : j["tpm_cas"])
    out_ << "  " << c["id"].get<std::string>().substr(0, 16) << "  "
         << c["subject"].get<std::string>() << "\n";
  out_ << "token signing keys:\n";
  for (const auto& k : j["signing_keys"])
    out_ << "  " << k["kid"].get<std::string>() << "  "
         << k["state"].get<std::string>() << "\n";
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

// The file store of versions before the database (the comment at the top
// of trustauthority/attestation.h had its layout), read completely and
// checked before anything is written. Pending enrollments and used ids are
// not carried over: the services must be stopped for the import, and
// started again only after a nonce lifetime and a proof's maximum age
// have passed (docs/trusted-admin.md, "Moving from the file store").
Status Admin::ImportFiles(const std::string& dir, const std::string& url) {
  auto damaged = [&](const std::string& file, const std::string& why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     dir + "/" + file + ": " + why);
  };
  auto read_json = [&](const std::string& file) -> Result<Json> {
    VCRYPT_ASSIGN_OR_RETURN(std::string text, ReadFile(dir + "/" + file));
    Json j = Json::parse(text, nullptr, false);
    if (!j.is_object()) return damaged(file, "not a JSON object");
    return j;
  };
  VCRYPT_ASSIGN_OR_RETURN(Json cfg, read_json(kConfigFile));
  if (cfg.value("version", 0) != kConfigVersion || !cfg.contains("pcrs") ||
      !cfg["pcrs"].is_string())
    return damaged(kConfigFile, "unknown version or no 'pcrs'");
  VCRYPT_ASSIGN_OR_RETURN(PcrSelection sel,
                          ParsePcrSelection(cfg["pcrs"].get<std::string>()));
  std::map<std::string, std::string> settings = {
      {"pcrs", FormatPcrSelection(sel)}, {"created", NowRfc3339()}};
  for (const char* k : {"issuer", "audience"})
    if (cfg.contains(k) && cfg[k].is_string())
      settings[k] = cfg[k].get<std::string>();
  VCRYPT_ASSIGN_OR_RETURN(SecureBuffer pem,
                          ReadOwnerOnlyFile(dir + "/" + kSigningKeyFile,
                                            "token signing key", 16 * 1024));
  auto key = EcSigningKey::FromPrivatePem(pem);
  if (!key.ok()) return damaged(kSigningKeyFile, key.error().message);
  VCRYPT_ASSIGN_OR_RETURN(std::string pub, key->ToPublicPem());
  SigningKeyInfo info{key->Thumbprint(), pub, "active", NowUnix(), {}};
  VCRYPT_ASSIGN_OR_RETURN(
      SecureBuffer nonce_key,
      ReadOwnerOnlyFile(dir + "/nonce.key", "nonce key", 64));
  if (nonce_key.size() != 32) return damaged("nonce.key", "not 32 bytes");

  std::vector<std::string> cas;
  for (const auto& id : Names(dir + "/tpm-cas", ".pem")) {
    VCRYPT_ASSIGN_OR_RETURN(std::string ca,
                            ReadFile(dir + "/tpm-cas/" + id + ".pem"));
    cas.push_back(std::move(ca));
  }
  std::vector<HostRow> hosts;
  auto b64_field = [](const Json& j, const char* k) {
    return j.is_object() && j.contains(k) && j[k].is_string()
               ? std::optional<std::string>(j[k].get<std::string>())
               : std::nullopt;
  };
  for (const auto& name : Names(dir + "/hosts", ".json")) {
    VCRYPT_RETURN_IF_ERROR(CheckName("host", name));
    VCRYPT_ASSIGN_OR_RETURN(Json rec, read_json("hosts/" + name + ".json"));
    HostRow h;
    h.name = name;
    h.registration = "0";
    if (auto r = b64_field(rec, "registration"); r && r->size() == 32)
      h.registration = *r;
    h.ek = b64_field(rec, "ek");
    // The pin: the registration's pin file (what replicas agreed on), else
    // the record's, else (records from before pinning) the enrolled EK.
    const std::string pin_file =
        dir + "/hosts/" + name + "." + h.registration + ".pin";
    if (Exists(pin_file)) {
      VCRYPT_ASSIGN_OR_RETURN(std::string pin, ReadFile(pin_file));
      h.pinned_ek = pin;
    } else if (auto pe = b64_field(rec, "pinned_ek")) {
      h.pinned_ek = pe;
    } else if (rec.contains("enrolled")) {
      h.pinned_ek = b64_field(rec["enrolled"], "ek");
    }
    if (h.ek) h.pinned_ek.reset();
    if (h.pinned_ek) h.pinned_at = rec.value("pinned_at", NowUnix());
    if (rec.contains("enrolled") && rec["enrolled"].is_object()) {
      h.enrolled_ek = b64_field(rec["enrolled"], "ek");
      h.enrolled_ak = b64_field(rec["enrolled"], "ak");
      if (rec["enrolled"].contains("at") &&
          rec["enrolled"]["at"].is_number_integer())
        h.enrolled_at = rec["enrolled"]["at"].get<int64_t>();
    }
    if (rec.contains("last_clock") && rec["last_clock"].is_object())
      h.last_clock = rec["last_clock"].dump();
    hosts.push_back(std::move(h));
  }
  std::vector<BaselineRow> baselines;
  for (const auto& name : Names(dir + "/baselines", ".json")) {
    VCRYPT_RETURN_IF_ERROR(CheckName("baseline", name));
    VCRYPT_ASSIGN_OR_RETURN(Json b, read_json("baselines/" + name + ".json"));
    baselines.push_back({name, b.dump(), NowUnix(), {}});
  }

  // Now the database: initialised by the import, so that an import into a
  // database in use is refused before it changes anything.
  VCRYPT_ASSIGN_OR_RETURN(auto store, OpenTaStore(url));
  VCRYPT_RETURN_IF_ERROR(
      store->Initialise(settings, info, pem.span(), nonce_key.span()));
  auto rest = [&]() -> Status {
    VCRYPT_ASSIGN_OR_RETURN(AttestationService svc, OpenAttestation(store));
    for (const auto& ca : cas) VCRYPT_RETURN_IF_ERROR(svc.AddTpmCa(ca));
    for (const auto& h : hosts) VCRYPT_RETURN_IF_ERROR(store->AddHost(h));
    for (const auto& b : baselines)
      VCRYPT_RETURN_IF_ERROR(store->PutBaseline(b, false, NowUnix()));
    return Status::Ok();
  };
  if (Status st = rest(); !st.ok())
    return MakeError(st.error().code,
                     "import-files stopped part-way (" + st.error().message +
                         "): drop and re-create the database, then import "
                         "again");
  if (json_) {
    out_ << Json{{"db", url},
                 {"hosts", hosts.size()},
                 {"baselines", baselines.size()},
                 {"tpm_cas", cas.size()}}
                .dump()
         << "\n";
  } else {
    out_ << "imported " << dir << " into " << url << ": " << hosts.size()
         << " hosts, " << baselines.size() << " baselines, " << cas.size()
         << " TPM CAs, the token signing key (kid " << info.kid
         << ") and the nonce key\n";
  }
  return Status::Ok();
}

}  // namespace

Status AdminCmd(const std::vector<std::string>& args, std::ostream& out) {
  return Admin(out).Run(args);
}

}  // namespace vcrypt::ta_tool_internal
