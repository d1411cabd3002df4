#include "common/wire.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace vcrypt {
namespace {

// write(2) to a pipe whose reader is gone, without SIGPIPE killing the
// process (send's MSG_NOSIGNAL does that for sockets only): SIGPIPE is
// blocked in this thread for the write, and the one it raised, if any, is
// taken off the thread's pending set before the mask is restored.
ssize_t WriteNoSigpipe(int fd, const void* p, size_t n) {
  sigset_t pipe_only, old;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
  ssize_t w = ::write(fd, p, n);
  int err = errno;
  if (w < 0 && err == EPIPE) {
    timespec zero = {0, 0};
    while (sigtimedwait(&pipe_only, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  errno = err;
  return w;
}

Status WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == ENOTSOCK) w = WriteNoSigpipe(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kIo,
                       std::string("write failed: ") + std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

using Clock = std::chrono::steady_clock;

// Waits until `fd` is readable or `deadline` (none when nullopt) passes.
Status WaitReadable(int fd, const std::optional<Clock::time_point>& deadline) {
  if (!deadline) return Status::Ok();
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        *deadline - Clock::now());
    if (left.count() <= 0)
      return MakeError(ErrorCode::kIo,
                       "timed out waiting for the rest of the message");
    pollfd p = {fd, POLLIN, 0};
    int n = poll(&p, 1, static_cast<int>(left.count()) + 1);
    if (n > 0) return Status::Ok();
    if (n < 0 && errno != EINTR)
      return MakeError(ErrorCode::kIo,
                       std::string("poll: ") + std::strerror(errno));
  }
}

// Reads up to '\n' without consuming any byte after it, so a following
// secret never passes through a std::string. On a socket it peeks a chunk
// and takes exactly the line; on a pipe it reads byte-wise.
Result<std::string> ReadLine(int fd,
                             const std::optional<Clock::time_point>& deadline) {
  std::string line;
  char buf[4096];
  bool is_socket = true;
  for (;;) {
    VCRYPT_RETURN_IF_ERROR(WaitReadable(fd, deadline));
    ssize_t r;
    if (is_socket) {
      r = ::recv(fd, buf, sizeof buf, MSG_PEEK);
      if (r < 0 && errno == ENOTSOCK) {
        is_socket = false;
        continue;
      }
    } else {
      r = ::read(fd, buf, 1);
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kIo,
                       std::string("read failed: ") + std::strerror(errno));
    }
    if (r == 0) {
      if (line.empty()) return MakeError(ErrorCode::kNotFound, "end of stream");
      return MakeError(ErrorCode::kIo, "connection closed mid-message");
    }
    size_t take = static_cast<size_t>(r);
    const char* nl = static_cast<const char*>(std::memchr(buf, '\n', take));
    if (nl != nullptr) take = static_cast<size_t>(nl - buf) + 1;
    if (line.size() + take - (nl ? 1 : 0) > kMaxMessageSize)
      return MakeError(ErrorCode::kUsage, "message too large");
    if (is_socket) {
      // Consume what was peeked (and only that).
      size_t got = 0;
      while (got < take) {
        ssize_t c = ::recv(fd, buf + got, take - got, 0);
        if (c < 0 && errno == EINTR) continue;
        if (c <= 0)
          return MakeError(ErrorCode::kIo, "connection closed mid-message");
        got += static_cast<size_t>(c);
      }
    }
    line.append(buf, nl ? take - 1 : take);
    if (nl) return line;
  }
}

}  // namespace

size_t JsonNestingDepth(std::string_view json, size_t limit) {
  size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : json) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > deepest) deepest = depth;
      if (deepest > limit) return deepest;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

Result<WireMessage> ReadMessage(int fd, int timeout_ms) {
  std::optional<Clock::time_point> deadline;
  if (timeout_ms >= 0)
    deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  VCRYPT_ASSIGN_OR_RETURN(std::string line, ReadLine(fd, deadline));
  if (JsonNestingDepth(line) > kMaxJsonDepth)
    return MakeError(ErrorCode::kUsage,
                     "malformed message: nested deeper than " +
                         std::to_string(kMaxJsonDepth) + " levels");
  WireMessage m;
  m.body = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (m.body.is_discarded() || !m.body.is_object())
    return MakeError(ErrorCode::kUsage, "malformed message: not a JSON object");
  if (auto it = m.body.find("secret_bytes"); it != m.body.end()) {
    if (!it->is_number_unsigned() || it->get<size_t>() == 0 ||
        it->get<size_t>() > kMaxSecretSize)
      return MakeError(ErrorCode::kUsage, "malformed message: secret_bytes");
    SecureBuffer s(it->get<size_t>());
    size_t got = 0;
    while (got < s.size()) {
      VCRYPT_RETURN_IF_ERROR(WaitReadable(fd, deadline));
      ssize_t r = ::read(fd, s.data() + got, s.size() - got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return MakeError(ErrorCode::kIo, "connection closed mid-secret");
      got += static_cast<size_t>(r);
    }
    m.secret = std::move(s);
    m.body.erase("secret_bytes");
  }
  return m;
}

Status WriteMessage(int fd, const nlohmann::json& body,
                    const SecureBuffer* secret) {
  std::string line;
  if (secret != nullptr && !secret->empty()) {
    nlohmann::json b = body;
    b["secret_bytes"] = secret->size();
    line = b.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  line.push_back('\n');
  VCRYPT_RETURN_IF_ERROR(WriteAll(fd, line.data(), line.size()));
  if (secret != nullptr && !secret->empty())
    VCRYPT_RETURN_IF_ERROR(WriteAll(fd, secret->data(), secret->size()));
  return Status::Ok();
}

}  // namespace vcrypt
