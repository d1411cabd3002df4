#include "common/wire.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace vcrypt {
namespace {

Status WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == ENOTSOCK) w = ::write(fd, p, n);
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

// Reads byte-wise up to '\n' so no bytes of a following secret are
// consumed into a std::string. Messages are small; the cost is irrelevant
// next to a key-provider round trip.
Result<std::string> ReadLine(int fd) {
  std::string line;
  for (;;) {
    char c;
    ssize_t r = ::read(fd, &c, 1);
    if (r < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kIo,
                       std::string("read failed: ") + std::strerror(errno));
    }
    if (r == 0) {
      if (line.empty()) return MakeError(ErrorCode::kNotFound, "end of stream");
      return MakeError(ErrorCode::kIo, "connection closed mid-message");
    }
    if (c == '\n') return line;
    if (line.size() >= kMaxMessageSize)
      return MakeError(ErrorCode::kUsage, "message too large");
    line.push_back(c);
  }
}

}  // namespace

Result<WireMessage> ReadMessage(int fd) {
  VCRYPT_ASSIGN_OR_RETURN(std::string line, ReadLine(fd));
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
