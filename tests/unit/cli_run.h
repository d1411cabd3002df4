// vcryptctl run in-process, for the unit tests of the CLI. Apart from
// tests/test_util.h so that test binaries that do not link the CLI (the dm
// tests) can use those helpers.
#ifndef VCRYPT_TESTS_UNIT_CLI_RUN_H_
#define VCRYPT_TESTS_UNIT_CLI_RUN_H_

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "cli/attach.h"
#include "cli/cli.h"

namespace vcrypt::testing {

struct CliRun {
  int code;
  std::string out, err;
};

// vcryptctl in-process, pointed at a socket that does not exist (so any
// command that would reach the daemon gets exit code 3). attach/detach
// run in-process too (RunCliWithLibvirt), not through vcrypt-attach.
inline CliRun RunCtl(const std::vector<std::string>& args) {
  std::vector<const char*> argv = {"vcryptctl", "--socket",
                                   "/nonexistent/vcrypt.sock"};
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  int code =
      RunCliWithLibvirt(static_cast<int>(argv.size()), argv.data(), out, err);
  return {code, out.str(), err.str()};
}

// Runs program `bin` with `argv` (argv[0] included) and collects its exit
// code and output. With `trace_libraries`, ld.so lists the shared
// libraries the program loads instead of running it. `input` (at most
// 1 MiB, what a pipe's buffer can be raised to) is its stdin.
inline CliRun RunBinary(const std::string& bin,
                        const std::vector<std::string>& argv,
                        bool trace_libraries = false,
                        const std::string& input = "") {
  int out[2], err[2], in[2];
  EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
  EXPECT_EQ(pipe2(err, O_CLOEXEC), 0);
  EXPECT_EQ(pipe2(in, O_CLOEXEC), 0);
  EXPECT_LE(input.size(), 1u << 20);
  if (input.size() > 65536) {
    EXPECT_GE(fcntl(in[1], F_SETPIPE_SZ, 1 << 20), 0);
  }
  EXPECT_EQ(write(in[1], input.data(), input.size()),
            static_cast<ssize_t>(input.size()));
  close(in[1]);
  std::vector<const char*> args;
  for (const auto& a : argv) args.push_back(a.c_str());
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    if (trace_libraries) setenv("LD_TRACE_LOADED_OBJECTS", "1", 1);
    execv(bin.c_str(), const_cast<char* const*>(args.data()));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  auto drain = [](int fd) {
    std::string s;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
      s.append(buf, static_cast<size_t>(n));
    close(fd);
    return s;
  };
  // Small outputs, read one after the other: stderr fits a pipe's buffer.
  std::string o = drain(out[0]), e = drain(err[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, o, e};
}

}  // namespace vcrypt::testing

#endif  // VCRYPT_TESTS_UNIT_CLI_RUN_H_
