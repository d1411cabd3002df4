#include "trustauthority/conn_guard.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

namespace vcrypt {

using Clock = std::chrono::steady_clock;

struct ConnectionGuard::State {
  explicit State(ConnectionLimits l) : limits(l) {}

  struct Conn {
    int fd;
    std::string client;
    Clock::time_point deadline;
    bool cut = false;
  };

  // The connection on `fd`: its id, or 0 when refused (its client holds
  // limits.per_client already; the socket is shut down).
  uint64_t Register(int fd) {
    const std::string client = ClientOf(fd);
    std::lock_guard lock(mu);
    size_t& n = per_client[client];
    if (n >= limits.per_client) {
      if (n == 0) per_client.erase(client);
      shutdown(fd, SHUT_RDWR);
      return 0;
    }
    ++n;
    const uint64_t id = next_id++;
    conns.emplace(id, Conn{fd, client, Clock::now() + limits.lifetime});
    cv.notify_all();
    return id;
  }

  void Unregister(uint64_t id) {
    std::lock_guard lock(mu);
    auto it = conns.find(id);
    if (it == conns.end()) return;
    auto pc = per_client.find(it->second.client);
    if (pc != per_client.end() && --pc->second == 0) per_client.erase(pc);
    conns.erase(it);
  }

  // The watchdog: connections share one lifetime and ids grow with time,
  // so the first connection not cut yet has the earliest deadline.
  void Watch() {
    std::unique_lock lock(mu);
    while (!stopping) {
      auto it = conns.begin();
      while (it != conns.end() && it->second.cut) ++it;
      if (it == conns.end()) {
        cv.wait(lock);
      } else if (it->second.deadline <= Clock::now()) {
        // Under mu: the SSL object, and so the descriptor, is still live
        // (Unregister takes mu before cpp-httplib closes the socket).
        shutdown(it->second.fd, SHUT_RDWR);
        it->second.cut = true;
      } else {
        // A copy: the node goes away if the connection ends meanwhile,
        // and wait_until reads its time point again after waking.
        const Clock::time_point deadline = it->second.deadline;
        cv.wait_until(lock, deadline);
      }
    }
  }

  // The client's address; for IPv6 its /64, which one host usually has
  // whole (counting single addresses would let it open any number).
  static std::string ClientOf(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
      return "?";
    char buf[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
      return buf;
    }
    if (ss.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
        inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], buf, sizeof buf);
        return buf;
      }
      in6_addr prefix = a->sin6_addr;
      std::memset(&prefix.s6_addr[8], 0, 8);
      inet_ntop(AF_INET6, &prefix, buf, sizeof buf);
      return std::string(buf) + "/64";
    }
    return "?";
  }

  const ConnectionLimits limits;
  mutable std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  uint64_t next_id = 1;
  std::map<uint64_t, Conn> conns;
  std::unordered_map<std::string, size_t> per_client;
  std::thread watchdog;
};

namespace {

using StatePtr = std::shared_ptr<ConnectionGuard::State>;

// What an SSL's slot holds: its connection's registration.
struct Registration {
  StatePtr state;
  uint64_t id;
};

void FreeCtxSlot(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<StatePtr*>(ptr);
}

void FreeSslSlot(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  auto* reg = static_cast<Registration*>(ptr);
  if (reg == nullptr) return;
  if (reg->id != 0) reg->state->Unregister(reg->id);
  delete reg;
}

struct Slots {
  int ctx = -1, ssl = -1;
};

const Slots& GetSlots() {
  static const Slots slots = [] {
    Slots s;
    s.ctx = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeCtxSlot);
    s.ssl = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeSslSlot);
    return s;
  }();
  return slots;
}

void InfoCallback(const SSL* ssl, int where, int /*ret*/) {
  // Once per connection, at the first handshake (TLS 1.3 signals a start
  // again for post-handshake messages).
  if ((where & SSL_CB_HANDSHAKE_START) == 0 || !SSL_is_server(ssl)) return;
  const Slots& slots = GetSlots();
  if (SSL_get_ex_data(ssl, slots.ssl) != nullptr) return;
  auto* state = static_cast<StatePtr*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), slots.ctx));
  const int fd = SSL_get_fd(ssl);
  if (state == nullptr || fd < 0) return;
  auto* reg = new Registration{*state, (*state)->Register(fd)};
  if (SSL_set_ex_data(const_cast<SSL*>(ssl), slots.ssl, reg) != 1) {
    if (reg->id != 0) reg->state->Unregister(reg->id);
    delete reg;
    shutdown(fd, SHUT_RDWR);  // untracked: not served
  }
}

}  // namespace

ConnectionGuard::ConnectionGuard(ConnectionLimits limits)
    : state_(std::make_shared<State>(limits)) {
  state_->watchdog = std::thread([s = state_.get()] { s->Watch(); });
}

ConnectionGuard::~ConnectionGuard() {
  {
    std::lock_guard lock(state_->mu);
    state_->stopping = true;
  }
  state_->cv.notify_all();
  state_->watchdog.join();
}

bool ConnectionGuard::Attach(SSL_CTX* ctx) {
  const Slots& slots = GetSlots();
  if (slots.ctx < 0 || slots.ssl < 0) return false;
  auto* holder = new StatePtr(state_);
  if (SSL_CTX_set_ex_data(ctx, slots.ctx, holder) != 1) {
    delete holder;
    return false;
  }
  SSL_CTX_set_info_callback(ctx, InfoCallback);
  return true;
}

}  // namespace vcrypt
