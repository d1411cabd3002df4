#include "daemon/held_closed.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

std::optional<std::string> ReadLine(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return std::nullopt;
  std::string s = *text;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  if (s.empty()) return std::nullopt;
  return s;
}

// A LUKS UUID as file name: hex digits and dashes only.
bool PlainUuid(const std::string& uuid) {
  return !uuid.empty() && uuid.size() <= 64 &&
         uuid.find_first_not_of("0123456789abcdefABCDEF-") == std::string::npos;
}

}  // namespace

std::optional<std::string> DeviceInstance(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) return std::nullopt;
  const std::string sys = "/sys/dev/block/" +
                          std::to_string(major(st.st_rdev)) + ":" +
                          std::to_string(minor(st.st_rdev));
  if (ReadLine(sys + "/loop/autoclear") == "1") return std::nullopt;
  // A partition has no sequence number of its own: its disk's (the
  // parent directory in sysfs) changes when the disk appears anew.
  auto seq = ReadLine(sys + "/diskseq");
  if (!seq && access((sys + "/partition").c_str(), F_OK) == 0)
    seq = ReadLine(sys + "/../diskseq");
  if (seq) return "diskseq:" + *seq;
  return "dev:" + std::to_string(major(st.st_rdev)) + ":" +
         std::to_string(minor(st.st_rdev));
}

std::string BootId() {
  return ReadLine("/proc/sys/kernel/random/boot_id").value_or("");
}

HeldClosed::HeldClosed(
    std::string dir,
    std::function<std::optional<std::string>(const std::string&)> instance_of,
    std::string boot_id)
    : dir_(std::move(dir)),
      instance_of_(std::move(instance_of)),
      boot_id_(std::move(boot_id)) {}

std::string HeldClosed::Path(const std::string& uuid) const {
  return dir_ + "/" + uuid + ".json";
}

Status HeldClosed::Hold(const std::string& uuid, const std::string& device) {
  if (!PlainUuid(uuid))
    return MakeError(ErrorCode::kInvalidArgument, "not a LUKS UUID: " + uuid);
  VCRYPT_RETURN_IF_ERROR(MakeDirs(dir_, 0700));
  Json rec = {{"boot_id", boot_id_}};
  if (auto inst = instance_of_(device)) rec["device"] = *inst;
  return WriteFileAtomic(Path(uuid), rec.dump() + "\n");
}

Status HeldClosed::Release(const std::string& uuid) {
  if (!PlainUuid(uuid)) return Status::Ok();
  if (unlink(Path(uuid).c_str()) != 0 && errno != ENOENT)
    return MakeError(ErrorCode::kIo, "cannot remove " + Path(uuid));
  return Status::Ok();
}

void HeldClosed::ForgetEarlierBoots() {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) {
    if (e.path().extension() != ".json") continue;
    auto text = ReadFile(e.path().string());
    if (!text.ok()) continue;
    Json rec = Json::parse(*text, nullptr, false);
    // A damaged record stays (it holds; see IsHeld).
    if (rec.is_object() && rec.contains("boot_id") &&
        rec["boot_id"].is_string() &&
        rec["boot_id"].get<std::string>() != boot_id_)
      std::filesystem::remove(e.path(), ec);
  }
}

bool HeldClosed::IsHeld(const std::string& uuid,
                        const std::string& device) const {
  if (!PlainUuid(uuid)) return false;
  auto text = ReadFile(Path(uuid));
  if (!text.ok()) return text.error().code != ErrorCode::kNotFound;
  Json rec = Json::parse(*text, nullptr, false);
  if (!rec.is_object() || !rec.contains("boot_id") ||
      !rec["boot_id"].is_string())
    return true;
  if (rec["boot_id"].get<std::string>() != boot_id_) return false;
  if (!rec.contains("device")) return true;
  if (!rec["device"].is_string()) return true;
  return instance_of_(device) == rec["device"].get<std::string>();
}

}  // namespace vcrypt
