// vcryptctl provider ...: add, list, show, remove, default, set, backup,
// restore.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <vector>

#include "cli/commands.h"
#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/handles.h"

namespace vcrypt::cli_internal {
namespace {

// "--pcrs 0,7": PCR numbers 0..23, as a JSON list in ascending order
// without repeats (the order they are given in does not matter).
Result<Json> ParsePcrs(const std::string& text) {
  auto bad = [&] {
    return UsageError(
        "--pcrs takes PCR numbers 0 to 23 separated by commas, "
        "e.g. --pcrs 0,7");
  };
  std::vector<int> pcrs;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma - start);
    if (item.empty() || item.size() > 2 ||
        item.find_first_not_of("0123456789") != std::string::npos)
      return bad();
    const int n = std::stoi(item);
    if (n > 23) return bad();
    pcrs.push_back(n);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  std::sort(pcrs.begin(), pcrs.end());
  pcrs.erase(std::unique(pcrs.begin(), pcrs.end()), pcrs.end());
  return Json(pcrs);
}

// --tpm [--tcti TCTI] [--pcrs LIST] into a provider.add/.restore request.
Status AddKeyStorage(const Sub& s, const std::string& tcti,
                     const std::string& pcrs, const std::string& what,
                     Json& req) {
  const bool tpm = s.vm.count("tpm") > 0;
  if (!tpm && (!tcti.empty() || !pcrs.empty()))
    return UsageError(what + ": --tcti and --pcrs go with --tpm");
  req["tpm"] = tpm;
  if (!tcti.empty()) req["tcti"] = tcti;
  if (!pcrs.empty()) {
    VCRYPT_ASSIGN_OR_RETURN(req["pcrs"], ParsePcrs(pcrs));
  }
  return Status::Ok();
}

// A provider description's "pcrs" as "0,7" ("" for none).
std::string PcrText(const Json& provider) {
  auto it = provider.find("pcrs");
  if (it == provider.end() || !it->is_array()) return "";
  std::string text;
  for (const auto& n : *it) text += (text.empty() ? "" : ",") + n.dump();
  return text;
}

// The PCRS column of `provider list`: a TPM-sealed key's PCRs, "-" for
// none.
void AddPcrColumn(Json& providers) {
  for (auto& p : providers) {
    if (p.value("key_storage", "") != "tpm") continue;
    const std::string text = PcrText(p);
    p["pcr_list"] = text.empty() ? "-" : text;
  }
}

// One line under "created"/"restored" saying where a sealed key lives.
void PrintSealed(std::ostream& out, const Json& provider) {
  if (provider.value("key_storage", "") != "tpm") return;
  const std::string pcrs = PcrText(provider);
  out << "  primary key sealed to the TPM at " << Str(provider["tcti"])
      << (pcrs.empty() ? " (no PCR policy)" : " (PCRs " + pcrs + ")") << "\n";
}

}  // namespace

Status Cli::Provider(const std::vector<std::string>& a) {
  if (a.empty()) return UsageError("provider: missing subcommand");
  const std::string& sub = a[0];
  std::vector<std::string> args(a.begin() + 1, a.end());
  po::options_description none;
  if (sub == "add") {
    std::string kms, ca, cert, key, attestation, kps, tcti, host, pcrs, max_age;
    po::options_description o;
    o.add_options()("kek-cache-max-age", po::value(&max_age))("tpm", "")(
        "kms", po::value(&kms))("ca", po::value(&ca))("cert", po::value(&cert))(
        "key", po::value(&key))("attestation", po::value(&attestation))(
        "kps", po::value(&kps))("tcti", po::value(&tcti))(
        "host", po::value(&host))("pcrs", po::value(&pcrs));
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, o, 2, 2, "provider add"));
    const std::string& type = s.words[0];
    Json req = {
        {"type", type}, {"name", s.words[1]}, {"tpm", s.vm.count("tpm") > 0}};
    if (!max_age.empty()) req["kek_cache_max_age"] = max_age;
    SecureBuffer key_pem;
    const bool trusted_opts =
        !attestation.empty() || !kps.empty() || !tcti.empty() || !host.empty();
    if (type == "native") {
      if (!kms.empty() || !ca.empty() || !cert.empty() || !key.empty() ||
          !attestation.empty() || !kps.empty() || !host.empty())
        return UsageError(
            "provider add native takes no "
            "--kms/--ca/--cert/--key/--attestation/--kps/--host");
      VCRYPT_RETURN_IF_ERROR(
          AddKeyStorage(s, tcti, pcrs, "provider add native", req));
    } else if (type == "trusted") {
      if (attestation.empty() || kps.empty() || ca.empty())
        return UsageError(
            "provider add trusted needs --attestation URL --kps URL --ca FILE");
      if (!kms.empty() || !cert.empty() || !key.empty() || s.vm.count("tpm") ||
          !pcrs.empty())
        return UsageError(
            "provider add trusted takes no --kms/--cert/--key/--tpm/--pcrs");
      auto ca_pem = ReadFile(ca);
      if (!ca_pem.ok()) return std::move(ca_pem).error();
      req["attestation"] = attestation;
      req["kps"] = kps;
      req["ca_pem"] = *ca_pem;
      if (!tcti.empty()) req["tcti"] = tcti;
      if (!host.empty()) req["host"] = host;
    } else if (type == "standard") {
      if (trusted_opts || s.vm.count("tpm") || !pcrs.empty())
        return UsageError(
            "provider add standard takes no "
            "--attestation/--kps/--tcti/--host/--tpm/--pcrs");
      if (kms.empty() || ca.empty() || cert.empty() || key.empty())
        return UsageError(
            "provider add standard needs --kms HOST:PORT[,...] --ca FILE "
            "--cert FILE --key FILE");
      auto ca_pem = ReadFile(ca);
      if (!ca_pem.ok()) return std::move(ca_pem).error();
      auto cert_pem = ReadFile(cert);
      if (!cert_pem.ok()) return std::move(cert_pem).error();
      VCRYPT_ASSIGN_OR_RETURN(key_pem, ReadSecretFile(key, "key file", false));
      req["kms"] = kms;
      req["ca_pem"] = *ca_pem;
      req["cert_pem"] = *cert_pem;
    } else {
      return MakeError(
          ErrorCode::kInvalidArgument,
          "provider type '" + type +
              "' is not supported (supported: native, standard, trusted)");
    }
    VCRYPT_ASSIGN_OR_RETURN(Json r, Call("provider.add", req,
                                         key_pem.empty() ? nullptr : &key_pem));
    Print(r, [&](const Json& j) {
      out_ << "created " << type << " provider '" << s.words[1] << "'"
           << (j.value("default", false) ? " (default)" : "") << "\n";
      PrintSealed(out_, j);
      if (j.contains("host") && j.contains("token_expires"))
        out_ << "  attested as host '" << Str(j["host"])
             << "', token valid until " << Str(j["token_expires"]) << "\n";
      if (j.contains("server_states"))
        for (const auto& st : j["server_states"])
          out_ << "  " << Str(st["server"]) << ": " << Str(st["state"])
               << (st.contains("last_error")
                       ? " (" + Str(st["last_error"]) + ")"
                       : "")
               << "\n";
    });
    return Status::Ok();
  }
  if (sub == "list") {
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, none, 0, 0, "provider list"));
    VCRYPT_ASSIGN_OR_RETURN(Json r, Call("provider.list", Json::object()));
    Print(r, [&](const Json& j) {
      Json rows = j["providers"];
      AddPcrColumn(rows);
      PrintTable(out_, rows,
                 {{"name", "NAME"},
                  {"type", "TYPE"},
                  {"default", "DEFAULT"},
                  {"vms", "VMS"},
                  {"state", "STATE"},
                  // How long a KEK is used from vcryptd's cache.
                  {"kek_cache_max_age", "KEK CACHE"},
                  // Native only: hosts that share a provider (restored
                  // from one backup) show the same ID.
                  {"primary_key_id", "PRIMARY KEY"},
                  // Native only: "file" or "tpm", and the PCRs a
                  // TPM-sealed key is bound to.
                  {"key_storage", "KEY STORAGE"},
                  {"pcr_list", "PCRS"}});
    });
    return Status::Ok();
  }
  if (sub == "show" || sub == "default") {
    VCRYPT_ASSIGN_OR_RETURN(Sub s,
                            ParseSub(args, none, 1, 1, "provider " + sub));
    VCRYPT_ASSIGN_OR_RETURN(Json r,
                            Call("provider." + sub, {{"name", s.words[0]}}));
    Print(r, [&](const Json& j) {
      if (sub == "show")
        PrintObject(out_, j);
      else
        out_ << "default provider: " << s.words[0] << "\n";
    });
    return Status::Ok();
  }
  if (sub == "set") {
    std::string max_age;
    po::options_description o;
    o.add_options()("kek-cache-max-age", po::value(&max_age));
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, o, 1, 1, "provider set"));
    if (max_age.empty())
      return UsageError(
          "provider set needs --kek-cache-max-age DURATION|unlimited|default");
    VCRYPT_ASSIGN_OR_RETURN(
        Json r, Call("provider.set",
                     {{"name", s.words[0]}, {"kek_cache_max_age", max_age}}));
    Print(r, [&](const Json& j) {
      out_ << "provider '" << s.words[0] << "': KEKs stay cached for "
           << Str(j["kek_cache_max_age"])
           << (j.value("kek_cache_max_age_source", "") == "default"
                   ? " (the default)"
                   : "")
           << "\n";
    });
    return Status::Ok();
  }
  if (sub == "remove") {
    po::options_description o;
    o.add_options()("force", "");
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, o, 1, 1, "provider remove"));
    VCRYPT_ASSIGN_OR_RETURN(
        Json r, Call("provider.remove", {{"name", s.words[0]},
                                         {"force", s.vm.count("force") > 0}}));
    Print(r, [&](const Json&) {
      out_ << "removed provider '" << s.words[0] << "'\n";
    });
    return Status::Ok();
  }
  if (sub == "backup") {
    std::string outp, pwf;
    po::options_description o;
    o.add_options()("out", po::value(&outp))("password-file", po::value(&pwf));
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, o, 1, 1, "provider backup"));
    if (outp.empty() || pwf.empty())
      return UsageError(
          "provider backup needs --out FILE|- and --password-file FILE");
    // "--out -": the PKCS#12 bytes on stdout, for a pipe to another host
    // (`... | ssh host2 vcryptctl provider restore - ...`); the one line of
    // confirmation then goes to stderr, and --json, which would share
    // stdout, is refused.
    const bool to_stdout = outp == "-";
    if (to_stdout && json_)
      return UsageError(
          "provider backup --out - writes the backup itself to "
          "stdout; it takes no --json");
    if (to_stdout && out_.rdbuf() == std::cout.rdbuf() && isatty(STDOUT_FILENO))
      return UsageError(
          "provider backup --out - refuses to write to a "
          "terminal; pipe it or give a file");
    struct stat st;
    if (!to_stdout && stat(outp.c_str(), &st) == 0)
      return MakeError(ErrorCode::kExists,
                       outp + " already exists; choose another --out");
    VCRYPT_ASSIGN_OR_RETURN(SecureBuffer pw, ReadPasswordFile(pwf));
    VCRYPT_ASSIGN_OR_RETURN(
        Json r, Call("provider.backup", {{"name", s.words[0]}}, &pw));
    auto bytes = Base64Decode(r.value("p12", ""));
    if (!bytes.ok() || bytes->empty())
      return MakeError(ErrorCode::kInternal, "vcryptd returned no backup data");
    const std::string key_id = r.value("primary_key_id", "");
    if (to_stdout) {
      out_.write(reinterpret_cast<const char*>(bytes->data()),
                 static_cast<std::streamsize>(bytes->size()));
      out_.flush();
      if (!out_)
        return MakeError(ErrorCode::kIo, "cannot write the backup to stdout");
      err_ << "backed up provider '" << s.words[0] << "' (primary key "
           << key_id << ") to stdout\n";
      return Status::Ok();
    }
    // Checked above already; a file made since is still never replaced.
    VCRYPT_RETURN_IF_ERROR(WriteNewFile(outp, *bytes, 0600));
    Json shown = {
        {"name", s.words[0]}, {"out", outp}, {"primary_key_id", key_id}};
    Print(shown, [&](const Json&) {
      out_ << "backed up provider '" << s.words[0] << "' to " << outp << "\n";
    });
    return Status::Ok();
  }
  if (sub == "restore") {
    std::string name, pwf, tcti, pcrs;
    po::options_description o;
    o.add_options()("name", po::value(&name))("password-file", po::value(&pwf))(
        "tpm", "")("tcti", po::value(&tcti))("pcrs", po::value(&pcrs));
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, o, 1, 1, "provider restore"));
    if (name.empty() || pwf.empty())
      return UsageError(
          "provider restore needs --name NAME and --password-file FILE");
    Json req = {{"name", name}};
    VCRYPT_RETURN_IF_ERROR(
        AddKeyStorage(s, tcti, pcrs, "provider restore", req));
    // FILE "-": the backup from stdin (the other end of `provider backup
    // --out -`); the password must then come from a file of its own.
    const bool from_stdin = s.words[0] == "-";
    if (from_stdin && (pwf == "-" || pwf == "/dev/stdin"))
      return UsageError(
          "provider restore - reads the backup from stdin; give the password "
          "in a file of its own");
    auto p12 = from_stdin ? ReadStdin(kMaxBackupSize, "the backup")
                          : ReadFile(s.words[0]);
    if (!p12.ok()) return std::move(p12).error();
    VCRYPT_ASSIGN_OR_RETURN(SecureBuffer pw, ReadPasswordFile(pwf));
    std::span<const uint8_t> bytes(
        reinterpret_cast<const uint8_t*>(p12->data()), p12->size());
    req["p12"] = Base64Encode(bytes);
    VCRYPT_ASSIGN_OR_RETURN(Json r, Call("provider.restore", req, &pw));
    Print(r, [&](const Json& j) {
      out_ << "restored provider '" << name << "'\n";
      PrintSealed(out_, j);
    });
    return Status::Ok();
  }
  return UsageError("unknown provider subcommand '" + sub + "'");
}

}  // namespace vcrypt::cli_internal
