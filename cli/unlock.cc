#include "cli/unlock.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "common/handles.h"
#include "common/names.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;
using std::chrono::milliseconds;

// "30s", "1.5s": how the logs have always spelt the units' seconds.
std::string Seconds(milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  std::ostringstream s;
  s << static_cast<double>(d.count()) / 1000 << "s";
  return s.str();
}

// One attempt: a request, and whether its outcome may change if asked
// again.
struct Outcome {
  Result<Json> result;
  bool transient;
};

// Runs `attempt` until it succeeds, fails for good, or the deadline
// passes, with backoff 1, 2, 4, ... s (at most options.max_delay, never
// past the deadline). `attempt` gets the time its request may wait. Each
// outcome goes to `seen` before the next attempt (UnlockAll records what
// an attempt opened even when it is retried). Returns the last outcome;
// an error still transient at the deadline says so in its message.
Result<Json> Retry(const std::string& what, UnlockClock::time_point end,
                   const UnlockOptions& options, const UnlockIo& io,
                   const std::function<Outcome(milliseconds)>& attempt,
                   const std::function<void(const Result<Json>&)>& seen = {}) {
  milliseconds delay = std::chrono::seconds(1);
  for (;;) {
    auto left = std::chrono::duration_cast<milliseconds>(end - io.now());
    Outcome o = attempt(std::max(left, options.min_attempt));
    if (seen) seen(o.result);
    if (!o.transient) return std::move(o.result);
    const std::string why = o.result.ok() ? "some volumes are not open yet"
                                          : o.result.error().message;
    left = std::chrono::duration_cast<milliseconds>(end - io.now());
    if (left.count() <= 0) {
      const std::string gave_up =
          what + ": giving up after " + Seconds(options.deadline) + ": " + why;
      // An answer (open_all's, with volumes still closed) is the caller's
      // to report.
      if (o.result.ok()) {
        io.log(gave_up);
        return std::move(o.result);
      }
      return MakeError(o.result.error().code, gave_up);
    }
    delay = std::min(delay, left);
    io.log(what + ": " + why + "; retrying in " + Seconds(delay));
    io.sleep(delay);
    delay = std::min(delay * 2, options.max_delay);
  }
}

Outcome Single(Result<Json> r) {
  const bool transient = !r.ok() && IsTransient(r.error().code);
  return {std::move(r), transient};
}

// The error of a failed step, named after the volume (unless Retry named
// it already).
Error Named(const std::string& what, Error e) {
  if (e.message.rfind(what + ": ", 0) != 0) e.message = what + ": " + e.message;
  return e;
}

std::string MarkerPath(const UnlockOptions& o, const char* name) {
  return o.marker_dir + "/" + name;
}

// Appends `text` to a marker file (created 0600). The RuntimeDirectory is
// tmpfs and the unit's own: nothing to fsync, nobody else writes there.
bool AppendMarker(const UnlockOptions& o, const char* name,
                  const std::string& text) {
  UniqueFd fd(open(MarkerPath(o, name).c_str(),
                   O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW,
                   0600));
  if (!fd.valid()) return false;
  for (size_t done = 0; done < text.size();) {
    ssize_t w = write(fd.get(), text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return false;
    done += static_cast<size_t>(w);
  }
  return true;
}

// The exit code of one volume of an open_all answer.
ErrorCode VolumeCode(const Json& v) {
  const Json& e = v.contains("error") && v["error"].is_object()
                      ? v["error"]
                      : Json::object();
  return ErrorCodeFromName(e.value("code", "internal"));
}

std::string VolumeName(const Json& v) {
  return v.value("vm", "?") + "/" + v.value("disk", "?");
}

// Closes `vol` for a unit's stop: `close --auto`, which does not hold it
// closed. Never fails; says what happened.
void CloseForStop(const std::string& vol, const Json& target,
                  const UnlockIo& io) {
  Json args = target;
  args["auto"] = true;
  auto r = io.call("close", args, std::chrono::seconds(30));
  if (r.ok())
    io.log(vol + ": closed");
  else if (r.error().code == ErrorCode::kNotFound)
    io.log(vol + ": was not open");
  else
    io.log(vol + ": left open: " + r.error().message);
}

}  // namespace

bool IsTransient(ErrorCode code) {
  return code == ErrorCode::kDaemonUnavailable ||
         code == ErrorCode::kKeyUnavailable;
}

Result<std::pair<std::string, std::string>> ParseUnlockTarget(
    const std::string& text) {
  std::string vm, disk;
  const auto slash = text.find('/');
  if (slash != std::string::npos) {
    vm = text.substr(0, slash);
    disk = text.substr(slash + 1);
  } else {
    const auto dash = text.rfind('-');
    if (dash != std::string::npos) {
      vm = text.substr(0, dash);
      disk = text.substr(dash + 1);
    }
  }
  if (vm.empty() || disk.empty() || !ValidateVolumeNames(vm, disk).ok())
    return MakeError(
        ErrorCode::kUsage,
        "'" + text + "' is neither VM/DISK nor a unit instance VM-DISK");
  return std::make_pair(vm, disk);
}

Status UnlockVolume(const std::string& vm, const std::string& disk,
                    const UnlockOptions& options, const UnlockIo& io) {
  const std::string vol = vm + "/" + disk;
  const auto end = io.now() + options.deadline;
  // One request: vcryptd skips a VM it does not know or that has
  // auto-unlock off ("skipped"), and leaves a volume an admin closed on
  // this boot closed ("held_closed").
  auto opened = Retry(vol, end, options, io, [&](milliseconds t) {
    return Single(io.call(
        "open",
        Json{{"vm", vm}, {"disk", disk}, {"auto", true}, {"boot", true}}, t));
  });
  if (!opened.ok()) return Named(vol, std::move(opened).error());
  if (!opened->is_object())
    return MakeError(ErrorCode::kInternal,
                     vol + ": malformed answer from vcryptd");
  const std::string skipped = opened->value("skipped", "");
  if (skipped == "not_registered") {
    io.log(vol + ": VM '" + vm +
           "' is not registered with vcryptd; not unlocking it (open it with "
           "'vcryptctl open PATH')");
    return Status::Ok();
  }
  if (skipped == "auto_unlock_off") {
    io.log(vol + ": auto-unlock is off for VM '" + vm + "'; not unlocking it");
    return Status::Ok();
  }
  if (skipped == "away") {
    io.log(vol + ": VM '" + vm +
           "' migrated to another host; not unlocking it here ('vcryptctl "
           "vm set " +
           vm + " --away off' if it runs here again)");
    return Status::Ok();
  }
  if (!skipped.empty())
    return MakeError(
        ErrorCode::kInternal,
        vol + ": vcryptd skipped it for an unknown reason '" + skipped + "'");
  const std::string path = opened->value("path", "");
  if (opened->value("held_closed", false)) {
    io.log(vol +
           ": closed by an admin on this boot; leaving it closed "
           "('vcryptctl open " +
           vol + "' opens it)");
  } else if (opened->value("already_open", false)) {
    io.log(vol + ": already open at " + path);
  } else {
    if (!options.marker_dir.empty() && !AppendMarker(options, "opened", ""))
      io.log(vol + ": cannot write " + MarkerPath(options, "opened") + ": " +
             std::strerror(errno) +
             " (it will not be closed when the unit stops)");
    io.log(vol + ": opened at " + path);
  }
  return Status::Ok();
}

Status UnlockAll(bool file_backed, const UnlockOptions& options,
                 const UnlockIo& io) {
  const std::string what = file_backed ? "file-backed volumes" : "all volumes";
  const auto end = io.now() + options.deadline;
  auto record = [&](const Result<Json>& r) {
    if (!r.ok() || !r->contains("opened") || !(*r)["opened"].is_array()) return;
    std::string names, list;
    for (const auto& n : (*r)["opened"]) {
      if (!n.is_string()) continue;
      names += n.get<std::string>() + "\n";
      list += (list.empty() ? "" : " ") + n.get<std::string>();
    }
    if (names.empty()) return;
    io.log(what + ": opened " + list);
    if (!options.marker_dir.empty() &&
        !AppendMarker(options, "opened-all", names))
      io.log(what + ": cannot write " + MarkerPath(options, "opened-all") +
             ": " + std::strerror(errno) +
             " (they will not be closed when the unit stops)");
  };
  auto r = Retry(
      what, end, options, io,
      [&](milliseconds t) {
        Outcome o = Single(io.call(
            "open_all", Json{{"file_backed", file_backed}, {"auto", true}}, t));
        if (o.result.ok() && o.result->contains("volumes"))
          for (const auto& v : (*o.result)["volumes"])
            if (!v.value("ok", false) && IsTransient(VolumeCode(v)))
              o.transient = true;
        return o;
      },
      record);
  if (!r.ok()) return r.error();
  if (!r->is_object() || !r->contains("volumes") || !(*r)["volumes"].is_array())
    return MakeError(ErrorCode::kInternal,
                     what + ": malformed answer from vcryptd");
  std::optional<ErrorCode> first;
  for (const auto& v : (*r)["volumes"]) {
    if (v.value("ok", false)) continue;
    const Json& e = v["error"];
    io.log(what + ": " + VolumeName(v) + ": " +
           (e.is_object() ? e.value("message", "") : std::string()));
    if (!first) first = VolumeCode(v);
  }
  if (first) return MakeError(*first, what + ": not all open");
  io.log(what + ": all open");
  return Status::Ok();
}

Status StopUnlocked(const std::string& vm, const std::string& disk,
                    const UnlockOptions& options, const UnlockIo& io) {
  if (options.marker_dir.empty()) return Status::Ok();
  if (!vm.empty()) {
    const std::string marker = MarkerPath(options, "opened");
    if (access(marker.c_str(), F_OK) != 0) return Status::Ok();  // not ours
    CloseForStop(vm + "/" + disk, Json{{"vm", vm}, {"disk", disk}}, io);
    unlink(marker.c_str());
    return Status::Ok();
  }
  const std::string marker = MarkerPath(options, "opened-all");
  std::ifstream in(marker);
  if (!in) return Status::Ok();
  std::set<std::string> names;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) names.insert(line);
  for (const auto& n : names) {
    auto t = ParseUnlockTarget(n);
    if (!t.ok() || n.find('/') == std::string::npos) {
      io.log(marker + ": ignoring '" + n + "'");
      continue;
    }
    CloseForStop(n, Json{{"vm", t->first}, {"disk", t->second}}, io);
  }
  unlink(marker.c_str());
  return Status::Ok();
}

}  // namespace vcrypt
