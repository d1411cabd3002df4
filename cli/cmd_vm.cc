// vcryptctl vm ... and volume ...
#include <sys/ioctl.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <vector>

#include "cli/commands.h"
#include "common/handles.h"
#include "common/random.h"

namespace vcrypt::cli_internal {

Status Cli::Vm(const std::vector<std::string>& a) {
  if (a.empty()) return UsageError("vm: missing subcommand");
  const std::string& sub = a[0];
  std::vector<std::string> args(a.begin() + 1, a.end());
  po::options_description none;
  if (sub == "create") {
    std::string provider;
    po::options_description o;
    o.add_options()("provider", po::value(&provider))("no-auto-unlock", "");
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, o, 1, 1, "vm create"));
    Json req = {{"vm", s.words[0]},
                {"no_auto_unlock", s.vm.count("no-auto-unlock") > 0}};
    if (!provider.empty()) req["provider"] = provider;
    VCRYPT_ASSIGN_OR_RETURN(Json r, Call("vm.create", req));
    Print(r, [&](const Json& j) {
      out_ << "created VM '" << s.words[0] << "' with provider '"
           << Str(j["provider"]) << "' (KEK " << Str(j["kek_id"]) << ")\n";
    });
    return Status::Ok();
  }
  if (sub == "register") {
    std::vector<std::string> from;
    po::options_description o;
    o.add_options()("from", po::value(&from)->multitoken())("no-auto-unlock",
                                                            "");
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, o, 1, 1, "vm register"));
    if (from.empty())
      return UsageError("vm register needs --from PATH (one per volume)");
    for (auto& p : from) {
      std::error_code ec;
      auto abs = std::filesystem::absolute(p, ec);
      if (!ec) p = abs.lexically_normal().string();
    }
    VCRYPT_ASSIGN_OR_RETURN(
        Json r, Call("vm.register",
                     {{"vm", s.words[0]},
                      {"from", from},
                      {"no_auto_unlock", s.vm.count("no-auto-unlock") > 0}}));
    Print(r, [&](const Json& j) {
      out_ << "registered VM '" << s.words[0] << "' with provider '"
           << Str(j["provider"]) << "' (KEK " << Str(j["kek_id"]) << "), "
           << j["disks"].size() << " disk(s)\n";
    });
    return Status::Ok();
  }
  if (sub == "rekey") {
    std::string provider;
    po::options_description o;
    o.add_options()("provider", po::value(&provider))("revoke-old", "")("deep",
                                                                        "");
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, o, 1, 1, "vm rekey"));
    Json req = {{"vm", s.words[0]},
                {"revoke_old", s.vm.count("revoke-old") > 0},
                {"deep", s.vm.count("deep") > 0}};
    if (s.vm.count("provider")) {
      if (provider.empty())
        return UsageError("vm rekey: --provider needs a name");
      req["provider"] = provider;
    }
    // Progress: with --json every event, one line each, as it comes; on
    // a terminal a progress display on stderr; else nothing, so scripts
    // reading the human output see what they always did.
    std::function<void(const Json&)> on_event;
    std::optional<ProgressRenderer> progress;
    if (json_) {
      on_event = [&](const Json& ev) {
        out_ << Json{{"event", ev}}.dump() << "\n" << std::flush;
      };
    } else if (&err_ == &std::cerr && isatty(STDERR_FILENO)) {
      winsize ws{};
      size_t columns = 80;
      if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        columns = ws.ws_col;
      progress.emplace(err_, columns);
      on_event = [&](const Json& ev) { progress->OnEvent(ev); };
    }
    auto answer = Call("vm.rekey", req, nullptr, nullptr, on_event);
    if (progress) progress->Finish();
    VCRYPT_ASSIGN_OR_RETURN(Json r, std::move(answer));
    Print(r, [&](const Json& j) {
      size_t rekeyed = 0;
      for (const auto& d : j["disks"]) rekeyed += d["result"] == "rekeyed";
      out_ << (j["resumed"].get<bool>() ? "finished the rekey of VM '"
                                        : "rekeyed VM '")
           << s.words[0] << "': KEK " << Str(j["kek_id"]) << " of provider '"
           << Str(j["provider"]) << "' (was " << Str(j["old_kek_id"]) << " of '"
           << Str(j["old_provider"]) << "'); " << rekeyed << " of "
           << j["disks"].size()
           << (j.value("deep", false)
                   ? " disk(s) re-encrypted under a new DEK now\n"
                   : " disk(s) re-wrapped now\n");
      if (j["old_kek_revoked"].get<bool>())
        out_ << "old KEK revoked and destroyed\n";
    });
    // The rekey is complete, but the admin asked for the old key to go.
    if (r.contains("revoke_error"))
      return MakeError(
          ErrorCodeFromName(Str(r["revoke_error"]["code"])),
          "the rekey is complete, but the old KEK was not revoked: " +
              Str(r["revoke_error"]["message"]));
    return Status::Ok();
  }
  if (sub == "set") {
    std::string auto_unlock, away;
    po::options_description o;
    o.add_options()("auto-unlock", po::value(&auto_unlock))("away",
                                                            po::value(&away));
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, o, 1, 1, "vm set"));
    auto on_off = [](const std::string& v) {
      return v.empty() || v == "on" || v == "off";
    };
    if ((auto_unlock.empty() && away.empty()) || !on_off(auto_unlock) ||
        !on_off(away))
      return UsageError(
          "vm set needs --auto-unlock on|off and/or --away on|off");
    Json req = {{"vm", s.words[0]}};
    if (!auto_unlock.empty()) req["auto_unlock"] = auto_unlock == "on";
    if (!away.empty()) req["away"] = away == "on";
    VCRYPT_ASSIGN_OR_RETURN(Json r, Call("vm.set", req));
    Print(r, [&](const Json& j) {
      out_ << "VM '" << s.words[0] << "': auto-unlock "
           << (j.value("auto_unlock", true) ? "on" : "off") << ", "
           << (j.value("away", false) ? "away (runs on another host)"
                                      : "runs here")
           << "\n";
    });
    return Status::Ok();
  }
  if (sub == "list") {
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, none, 0, 0, "vm list"));
    VCRYPT_ASSIGN_OR_RETURN(Json r, Call("vm.list", Json::object()));
    Print(r, [&](const Json& j) {
      PrintTable(out_, j["vms"],
                 {{"vm", "VM"},
                  {"provider", "PROVIDER"},
                  {"disks", "DISKS"},
                  {"kek_cached", "KEK_CACHED"},
                  {"auto_unlock", "AUTO_UNLOCK"}});
    });
    return Status::Ok();
  }
  if (sub == "show" || sub == "unregister" || sub == "delete") {
    po::options_description o;
    if (sub == "delete") o.add_options()("destroy-key", "")("erase", "");
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, o, 1, 1, "vm " + sub));
    Json req = {{"vm", s.words[0]}};
    if (sub == "delete") {
      req["destroy_key"] = s.vm.count("destroy-key") > 0;
      req["erase"] = s.vm.count("erase") > 0;
    }
    VCRYPT_ASSIGN_OR_RETURN(Json r, Call("vm." + sub, req));
    Print(r, [&](const Json& j) {
      if (sub == "show") {
        PrintObject(out_, j);
      } else {
        out_ << (sub == "delete" ? "deleted" : "unregistered") << " VM '"
             << s.words[0] << "': closed " << j["closed"].size()
             << " volume(s), evicted " << Str(j["evicted"]) << " cached KEK(s)"
             << (j.value("kek_destroyed", false) ? ", KEK destroyed on the KMS"
                                                 : "");
        if (j.contains("erased") && !j["erased"].empty())
          out_ << ", key material erased from " << j["erased"].size()
               << " volume(s)";
        out_ << "\n";
      }
    });
    return Status::Ok();
  }
  return UsageError("unknown vm subcommand '" + sub + "'");
}

Status Cli::Volume(const std::vector<std::string>& a) {
  if (a.empty()) return UsageError("volume: missing subcommand");
  const std::string& sub = a[0];
  std::vector<std::string> args(a.begin() + 1, a.end());
  if (sub == "create") {
    std::string device, file, size;
    unsigned sector = 4096;
    po::options_description o;
    o.add_options()("device", po::value(&device))("file", po::value(&file))(
        "size", po::value(&size))("sector-size", po::value(&sector))("force",
                                                                     "");
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, o, 2, 2, "volume create"));
    if (device.empty() == file.empty())
      return UsageError(
          "volume create needs exactly one of --device PATH or --file PATH");
    if (sector != 512 && sector != 4096)
      return MakeError(ErrorCode::kInvalidArgument,
                       "--sector-size must be 512 or 4096");
    Json req = {{"vm", s.words[0]},
                {"disk", s.words[1]},
                {"sector_size", sector},
                {"force", s.vm.count("force") > 0}};
    if (!device.empty()) {
      if (!size.empty())
        return UsageError("--size goes with --file, not --device");
      req["device"] = device;
    } else {
      if (size.empty())
        return UsageError("--file needs --size SIZE (e.g. 10G)");
      VCRYPT_ASSIGN_OR_RETURN(uint64_t bytes, ParseSize(size));
      req["file"] = file;
      req["size"] = bytes;
    }
    for (const char* k : {"device", "file"}) {
      if (req.contains(k) && req[k].get<std::string>()[0] != '/') {
        char cwd[4096];
        if (getcwd(cwd, sizeof cwd) == nullptr)
          return MakeError(ErrorCode::kIo, "cannot resolve relative path");
        req[k] = std::string(cwd) + "/" + req[k].get<std::string>();
      }
    }
    VCRYPT_ASSIGN_OR_RETURN(Json r, Call("volume.create", req));
    Print(r, [&](const Json& j) {
      out_ << "created volume " << s.words[0] << "/" << s.words[1] << " on "
           << Str(j["device"]) << " (LUKS2 UUID " << Str(j["uuid"]) << ")\n";
    });
    return Status::Ok();
  }
  if (sub == "list") {
    po::options_description none;
    VCRYPT_ASSIGN_OR_RETURN(Sub s, ParseSub(args, none, 0, 1, "volume list"));
    Json req = Json::object();
    if (!s.words.empty()) req["vm"] = s.words[0];
    VCRYPT_ASSIGN_OR_RETURN(Json r, Call("volume.list", req));
    Print(r, [&](const Json& j) {
      Json rows = j["volumes"];
      for (auto& v : rows) v["detail"] = StateDetail(v);
      PrintTable(out_, rows,
                 {{"vm", "VM"},
                  {"disk", "DISK"},
                  {"state", "STATE"},
                  {"device", "DEVICE"},
                  {"recovery_key", "RECOVERY_KEY"},
                  {"detail", "DETAIL"}});
    });
    return Status::Ok();
  }
  if (sub == "recovery-key") {
    // docs/recovery.md. The key arrives on the protocol's secret channel
    // into locked memory and is printed once from there; it never becomes
    // a std::string or part of a JSON value here.
    if (args.empty())
      return UsageError("volume recovery-key: missing add or remove");
    const std::string action = args[0];
    std::vector<std::string> rest(args.begin() + 1, args.end());
    po::options_description o;
    if (action == "remove")
      o.add_options()("force", "");
    else if (action != "add")
      return UsageError("unknown volume recovery-key subcommand '" + action +
                        "'");
    VCRYPT_ASSIGN_OR_RETURN(
        Sub s, ParseSub(rest, o, 1, 1, "volume recovery-key " + action));
    VCRYPT_ASSIGN_OR_RETURN(Json req, TargetArgs(s.words[0]));
    if (action == "remove") {
      req["force"] = s.vm.count("force") > 0;
      VCRYPT_ASSIGN_OR_RETURN(Json r, Call("volume.recovery_key.remove", req));
      Print(r, [&](const Json& j) {
        out_ << "removed the recovery key of " << Str(j["vm"]) << "/"
             << Str(j["disk"]) << " (keyslot " << Str(j["keyslot"]) << ")\n";
      });
      return Status::Ok();
    }
    SecureBuffer key;
    VCRYPT_ASSIGN_OR_RETURN(
        Json r, Call("volume.recovery_key.add", req, nullptr, &key));
    if (key.size() != kRecoveryKeySize)
      return MakeError(ErrorCode::kInternal,
                       "vcryptd added a recovery keyslot to " + Str(r["vm"]) +
                           "/" + Str(r["disk"]) +
                           " but sent no key; remove it with "
                           "'vcryptctl volume recovery-key remove'");
    // As vcryptctl, straight from locked memory to fd 1 (no copy in
    // stdio's buffer); into the stream otherwise (tests).
    auto emit_key = [&] {
      if (&out_ == &std::cout) {
        out_.flush();
        std::fflush(stdout);
        for (size_t done = 0; done < key.size();) {
          ssize_t w =
              ::write(STDOUT_FILENO, key.data() + done, key.size() - done);
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) return false;
          done += static_cast<size_t>(w);
        }
        return true;
      }
      out_.write(key.chars(), static_cast<std::streamsize>(key.size()));
      return static_cast<bool>(out_);
    };
    bool printed;
    if (json_) {
      // The result's members after "recovery_key"; the key's alphabet
      // needs no JSON escaping.
      const std::string rest_json = r.dump(2).substr(2);
      out_ << "{\n  \"recovery_key\": \"";
      printed = emit_key();
      out_ << "\",\n" << rest_json << "\n";
    } else {
      const Json& p = r["pbkdf"];
      out_ << "recovery key of " << Str(r["vm"]) << "/" << Str(r["disk"])
           << " (keyslot " << Str(r["keyslot"]) << ", " << Str(p["type"]) << " "
           << Str(p["memory_kib"]) << " KiB, time cost " << Str(p["time_cost"])
           << ", " << Str(p["threads"]) << " threads):\n\n    ";
      printed = emit_key();
      out_ << "\n\nIt is shown only this once: vcrypt keeps no copy. Keep it "
              "offline and "
              "apart from the\ndisk. With it, 'cryptsetup open "
           << Str(r["device"])
           << " NAME' opens the volume\nwithout vcrypt or its key provider: "
              "type it "
              "exactly as shown, dashes included.\n";
    }
    out_.flush();
    key.Clear();
    if (!printed || !out_)
      return MakeError(
          ErrorCode::kIo,
          "the recovery key could not be printed; remove it with 'vcryptctl "
          "volume recovery-key remove " +
              s.words[0] + "' and add a new one");
    return Status::Ok();
  }
  return UsageError("unknown volume subcommand '" + sub + "'");
}

}  // namespace vcrypt::cli_internal
