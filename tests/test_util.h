// Small helpers shared by the GoogleTest binaries.
#ifndef VCRYPT_TESTS_TEST_UTIL_H_
#define VCRYPT_TESTS_TEST_UTIL_H_

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace vcrypt::testing {

// A fresh directory under /tmp, removed with everything in it.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "test") {
    std::string t = "/tmp/vcrypt-" + tag + "-XXXXXX";
    char* p = mkdtemp(t.data());
    path_ = p ? p : "";
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline int CountLines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

}  // namespace vcrypt::testing

#endif  // VCRYPT_TESTS_TEST_UTIL_H_
