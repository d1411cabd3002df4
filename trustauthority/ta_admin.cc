// `vcrypt-ta admin ...`: creates and edits the state directory the
// services read (docs/trusted-admin.md).

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <ostream>

#include "common/atomic_file.h"
#include "common/clock.h"
#include "trustauthority/attestation.h"
#include "trustauthority/ta_tool_internal.h"

namespace vcrypt::ta_tool_internal {
namespace {

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

}  // namespace

Status AdminCmd(const std::vector<std::string>& args, std::ostream& out) {
  return Admin(out).Run(args);
}

}  // namespace vcrypt::ta_tool_internal
