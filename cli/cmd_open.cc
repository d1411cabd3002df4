// vcryptctl open, close, unlock, status, cache and probe.
#include <sys/ioctl.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <thread>
#include <tuple>
#include <vector>

#include "cli/commands.h"
#include "cli/probe.h"
#include "cli/unlock.h"
#include "common/names.h"

namespace vcrypt::cli_internal {

namespace {

// "30", "30s", "500ms", "2min" -> milliseconds; at most a day.
Result<std::chrono::milliseconds> ParseDeadline(const std::string& text) {
  size_t digits = 0;
  while (digits < text.size() &&
         std::isdigit(static_cast<unsigned char>(text[digits])))
    ++digits;
  const std::string unit = text.substr(digits);
  int64_t scale = unit.empty() || unit == "s" ? 1000
                  : unit == "ms"              ? 1
                  : unit == "min"             ? 60000
                                              : 0;
  if (digits == 0 || digits > 9 || scale == 0)
    return UsageError("--deadline: '" + text +
                      "' is not a duration (30, 30s, 500ms, 2min)");
  const auto ms =
      std::chrono::milliseconds(std::stoll(text.substr(0, digits)) * scale);
  if (ms > std::chrono::hours(24))
    return UsageError("--deadline: at most a day");
  return ms;
}

}  // namespace

Status Cli::OpenClose(const std::string& cmd,
                      const std::vector<std::string>& a) {
  po::options_description o;
  if (cmd == "open")
    o.add_options()("discards", "")("all", "")("file-backed", "")("auto", "");
  else
    o.add_options()("auto", "");
  VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(a, o, 0, 1, cmd));
  const bool automatic = s.vm.count("auto") > 0;
  if (s.vm.count("all")) {
    if (!s.words.empty() || s.vm.count("discards"))
      return UsageError("open --all takes no volume and no --discards");
    return OpenAll(s.vm.count("file-backed") > 0, automatic);
  }
  if (s.vm.count("file-backed"))
    return UsageError("--file-backed goes with open --all");
  if (s.words.empty()) return UsageError(cmd + ": wrong number of arguments");
  VCRYPT_ASSIGN_OR_RETURN(Json req, TargetArgs(s.words[0]));
  if (cmd == "open") req["discards"] = s.vm.count("discards") > 0;
  if (automatic) req["auto"] = true;
  VCRYPT_ASSIGN_OR_RETURN(Json r, Call(cmd, req));
  Print(r, [&](const Json& j) {
    if (cmd == "open" && j.value("held_closed", false))
      out_ << s.words[0] << ": closed by an admin on this boot; left closed "
           << "(vcryptctl open " << s.words[0] << " opens it)\n";
    else if (cmd == "open")
      out_ << Str(j["path"]) << "\n";
    else
      out_ << "closed " << Str(j["closed"]) << "\n";
  });
  return Status::Ok();
}

Status Cli::OpenAll(bool file_backed, bool automatic) {
  Json req = {{"file_backed", file_backed}};
  if (automatic) req["auto"] = true;
  VCRYPT_ASSIGN_OR_RETURN(Json r, Call("open_all", req));
  Print(r, [&](const Json& j) {
    for (const auto& v : j["volumes"]) {
      if (!v.value("ok", false)) continue;
      if (v.value("held_closed", false)) {
        out_ << Str(v["vm"]) << "/" << Str(v["disk"])
             << ": closed by an admin on this boot; left closed\n";
        continue;
      }
      out_ << Str(v["vm"]) << "/" << Str(v["disk"]) << ": "
           << (v.value("already_open", false) ? "already open " : "opened ")
           << Str(v["path"]) << "\n";
    }
    if (j["volumes"].empty()) out_ << "no volumes to open\n";
  });
  // One line per volume that did not open; the exit code is the first one's.
  std::optional<ErrorCode> first;
  for (const auto& v : r["volumes"]) {
    if (v.value("ok", false)) continue;
    const Json& e = v["error"];
    err_ << "vcryptctl: " << Str(v["vm"]) << "/" << Str(v["disk"]) << ": "
         << Str(e.value("message", Json())) << "\n";
    if (!first) first = ErrorCodeFromName(e.value("code", ""));
  }
  if (first) return MakeError(*first, "");
  return Status::Ok();
}

Status Cli::Unlock(const std::vector<std::string>& a) {
  std::string deadline = "30";
  po::options_description o;
  o.add_options()("all", "")("file-backed", "")("stop", "")(
      "deadline", po::value(&deadline))("marker-dir", po::value<std::string>());
  VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(a, o, 0, 1, "unlock"));
  const bool all = s.vm.count("all") > 0;
  if (all != s.words.empty())
    return UsageError("unlock takes one VM/DISK, or --all");
  if (s.vm.count("file-backed") && !all)
    return UsageError("--file-backed goes with unlock --all");
  UnlockOptions opts;
  VCRYPT_ASSIGN_OR_RETURN(opts.deadline, ParseDeadline(deadline));
  // The unit's RuntimeDirectory, which systemd names in the environment.
  if (s.vm.count("marker-dir"))
    opts.marker_dir = s.vm["marker-dir"].as<std::string>();
  else if (const char* d = std::getenv("RUNTIME_DIRECTORY");
           d != nullptr && *d == '/')
    opts.marker_dir = d;
  std::string vm, disk;
  if (!all) {
    VCRYPT_ASSIGN_OR_RETURN(auto t, ParseUnlockTarget(s.words[0]));
    std::tie(vm, disk) = t;
  }
  UnlockIo io;
  io.call = [&](const std::string& op, const Json& args,
                std::chrono::milliseconds timeout) -> Result<Json> {
    if (!client_) {
      VCRYPT_ASSIGN_OR_RETURN(Client c, Client::Connect(socket_));
      client_.emplace(std::move(c));
    }
    client_->set_timeout(timeout);
    auto r = client_->Call(op, args);
    // After a timeout or a lost daemon the connection is spent; after an
    // error answer, the next request starts afresh too.
    if (!r.ok()) client_.reset();
    return r;
  };
  io.now = [] { return UnlockClock::now(); };
  io.sleep = [this](std::chrono::milliseconds d) {
    // vcryptd drops a connection idle for its request timeout (15 s by
    // default), shorter than the longer backoffs: reconnect after a wait.
    client_.reset();
    std::this_thread::sleep_for(d);
  };
  io.log = [&](const std::string& line) {
    err_ << "vcryptctl unlock: " << line << "\n" << std::flush;
  };
  if (s.vm.count("stop")) return StopUnlocked(vm, disk, opts, io);
  if (all) return UnlockAll(s.vm.count("file-backed") > 0, opts, io);
  return UnlockVolume(vm, disk, opts, io);
}

Status Cli::StatusCmd(const std::vector<std::string>& a) {
  po::options_description none;
  VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(a, none, 0, 0, "status"));
  VCRYPT_ASSIGN_OR_RETURN(Json r, Call("status", Json::object()));
  Print(r, [&](const Json& j) {
    out_ << "device-mapper: "
         << (j.value("device_mapper", false) ? "available" : "NOT available")
         << "\n";
    out_ << "providers: " << j["providers"].size();
    if (j.contains("default_provider"))
      out_ << " (default " << Str(j["default_provider"]) << ")";
    out_ << "\n";
    out_ << "cached KEKs: " << j["kek_cache"].size() << "\n";
    for (const auto& k : j["kek_cache"])
      out_ << "  VM " << Str(k["vm"]) << ": KEK " << Str(k["kek_id"])
           << " of provider " << Str(k["provider"]) << ", fetched "
           << k.value("age_seconds", int64_t{0}) << "s ago (max age "
           << Str(k.value("max_age", Json("?"))) << ")\n";
    Json rows = Json::array();
    for (const auto& vm : j["vms"]) {
      for (const auto& d : vm["disks"]) {
        rows.push_back({{"volume", Str(d["vm"]) + "/" + Str(d["disk"])},
                        {"state", d["state"]},
                        {"provider", vm["provider"]},
                        {"kek_cached", vm["kek_cached"]},
                        {"recovery_key", d.value("recovery_key", Json())},
                        {"detail", StateDetail(d)}});
      }
      if (vm["disks"].empty())
        rows.push_back({{"volume", Str(vm["vm"]) + "/-"},
                        {"provider", vm["provider"]},
                        {"kek_cached", vm["kek_cached"]},
                        {"state", "-"},
                        {"detail", ""}});
    }
    PrintTable(out_, rows,
               {{"volume", "VOLUME"},
                {"state", "STATE"},
                {"provider", "PROVIDER"},
                {"kek_cached", "KEK_CACHED"},
                {"recovery_key", "RECOVERY_KEY"},
                {"detail", "DETAIL"}});
  });
  return Status::Ok();
}

Status Cli::Cache(const std::vector<std::string>& a) {
  po::options_description none;
  VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(a, none, 1, 2, "cache"));
  if (s.words[0] != "evict")
    return UsageError("unknown cache subcommand '" + s.words[0] + "'");
  Json req = Json::object();
  if (s.words.size() == 2) req["vm"] = s.words[1];
  VCRYPT_ASSIGN_OR_RETURN(Json r, Call("cache.evict", req));
  Print(r, [&](const Json& j) {
    out_ << "evicted " << Str(j["evicted"]) << " KEK(s)\n";
  });
  return Status::Ok();
}

// udev IMPORT{program} helper: reads the header itself, never the daemon
// (see cli/probe.h). Prints nothing on stdout unless DEVICE is a vcrypt
// volume.
Status Cli::Probe(const std::vector<std::string>& a) {
  po::options_description none;
  VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(a, none, 1, 1, "probe"));
  VCRYPT_ASSIGN_OR_RETURN(ProbeInfo info, ProbeDevice(s.words[0]));
  out_ << FormatProbe(info);
  return Status::Ok();
}

}  // namespace vcrypt::cli_internal
