// The Controller's op table (daemon/controller.h, Controller::Ops()): one
// entry per op with its least role and its handler, which is all that
// daemon/roles.h's RequiredRole and KnownOps know, and which
// docs/protocol.md's "Roles" table must list exactly. Needs no daemon and
// no device-mapper: a real Controller over a temporary state directory.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "daemon/controller.h"
#include "daemon/roles.h"
#include "tests/test_util.h"

namespace vcrypt {
namespace {

using Json = nlohmann::json;

TEST(OpTableTest, EveryOpHasOneEntryWithARoleAndAHandler) {
  std::set<std::string> names;
  for (const auto& op : Controller::Ops()) {
    EXPECT_TRUE(names.insert(std::string(op.name)).second)
        << "op '" << op.name << "' is in the table twice";
    EXPECT_NE(op.handler, nullptr) << op.name;
    EXPECT_TRUE(op.role == Role::kMonitor || op.role == Role::kOperator ||
                op.role == Role::kRoot)
        << op.name;
    EXPECT_EQ(Controller::FindOp(op.name), &op) << op.name;
    // Without arguments, RequiredRole is the entry's role.
    EXPECT_EQ(RequiredRole(std::string(op.name), Json::object()), op.role)
        << op.name;
  }
  // KnownOps is the table's names, sorted.
  EXPECT_EQ(KnownOps(), std::vector<std::string>(names.begin(), names.end()));
  EXPECT_EQ(Controller::FindOp("no.such.op"), nullptr);
  EXPECT_EQ(Controller::FindOp(""), nullptr);
}

class OpTableControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ControllerOptions o;
    o.state_dir = dir_ / "state";
    o.by_uuid_dir = dir_ / "by-uuid";
    auto c = Controller::Create(o);
    ASSERT_TRUE(c.ok()) << c.error().message;
    controller_ = std::move(c).value();
  }
  static Caller As(Role role) {
    Caller c;
    c.uid = role == Role::kRoot ? 0 : 1000;
    c.role = role;
    return c;
  }

  testing::TempDir dir_{"op-table"};
  std::unique_ptr<Controller> controller_;
};

TEST_F(OpTableControllerTest, UnknownOpIsRefusedAsBefore) {
  SecureBuffer none;
  for (Role role : {Role::kMonitor, Role::kOperator, Role::kRoot}) {
    auto r = controller_->Handle("no.such.op", Json::object(), none, As(role));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kUsage);
    EXPECT_EQ(r.error().message, "unknown operation 'no.such.op'");
    SecureBuffer reply;
    auto r2 = controller_->Handle("no.such.op", Json::object(), none, As(role),
                                  &reply);
    ASSERT_FALSE(r2.ok());
    EXPECT_EQ(r2.error().message, "unknown operation 'no.such.op'");
  }
  // Arguments are checked first, as they always were.
  auto r =
      controller_->Handle("no.such.op", Json::array(), none, As(Role::kRoot));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "'args' must be an object");
}

TEST_F(OpTableControllerTest, RefusalsKeepTheirMessages) {
  SecureBuffer none;
  auto r = controller_->Handle("vm.rekey", Json{{"vm", "v"}, {"provider", "p"}},
                               none, As(Role::kOperator));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(r.error().message,
            "permission denied: vm.rekey with a provider change or "
            "revoke_old needs the root role; uid 1000 has operator");
  r = controller_->Handle("cache.evict", Json::object(), none,
                          As(Role::kMonitor));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message,
            "permission denied: cache.evict needs the root role; uid 1000 "
            "has monitor");
  // The handlers are reached: ping answers, status reports.
  r = controller_->Handle("ping", Json::object(), none, As(Role::kMonitor));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, (Json{{"pong", true}}));
}

// volume.recovery_key.add returns a secret: only the overload with a
// secret channel may run it, and only with somewhere to put the key.
TEST_F(OpTableControllerTest, RecoveryKeyAddNeedsTheSecretChannel) {
  SecureBuffer none;
  const Json args{{"vm", "vm1"}, {"disk", "d1"}};
  auto r = controller_->Handle("volume.recovery_key.add", args, none,
                               As(Role::kRoot));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInternal);
  EXPECT_EQ(r.error().message,
            "volume.recovery_key.add needs a caller that can take a secret "
            "back");
  r = controller_->Handle("volume.recovery_key.add", args, none,
                          As(Role::kRoot), nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "no channel for the recovery key");
  // With a channel it reaches the op itself (no such VM here).
  SecureBuffer key;
  r = controller_->Handle("volume.recovery_key.add", args, none,
                          As(Role::kRoot), &key);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound) << r.error().message;
  EXPECT_TRUE(key.empty());
  // The role check still comes first.
  r = controller_->Handle("volume.recovery_key.add", args, none,
                          As(Role::kOperator), &key);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kPermissionDenied);
}

// docs/protocol.md, "Roles": the ops its table names, each with the least
// role of any row naming it (the first of monitor, operator, root that is
// not "–"). A row's first cell starts with its ops in backticks, separated
// by ", "; what follows (a remark, an argument in backticks) is not an op.
std::map<std::string, Role> DocumentedRoles(const std::string& markdown) {
  std::map<std::string, Role> out;
  std::istringstream in(markdown);
  std::string line;
  bool in_section = false;
  while (std::getline(in, line)) {
    if (line.rfind("## ", 0) == 0) {
      in_section = line == "## Roles";
      continue;
    }
    if (!in_section || line.rfind("| `", 0) != 0) continue;
    std::vector<std::string> cells;
    size_t pos = 1;
    for (size_t bar; (bar = line.find('|', pos)) != std::string::npos;
         pos = bar + 1) {
      std::string c = line.substr(pos, bar - pos);
      c.erase(0, c.find_first_not_of(' '));
      c.erase(c.find_last_not_of(' ') + 1);
      cells.push_back(c);
    }
    if (cells.size() != 4) {
      ADD_FAILURE() << "Roles row without 4 cells: " << line;
      continue;
    }
    std::optional<Role> role;
    for (int i = 1; i <= 3 && !role; ++i)
      if (cells[i] != "–") role = static_cast<Role>(i - 1);
    if (!role) {
      ADD_FAILURE() << "Roles row that no role may call: " << line;
      continue;
    }
    const std::string& first = cells[0];
    size_t p = 0;
    while (p < first.size() && first[p] == '`') {
      size_t end = first.find('`', p + 1);
      if (end == std::string::npos) break;
      std::string op = first.substr(p + 1, end - p - 1);
      auto [it, added] = out.emplace(op, *role);
      if (!added) it->second = std::min(it->second, *role);
      p = end + 1;
      if (first.compare(p, 2, ", ") != 0) break;
      p += 2;
    }
  }
  return out;
}

TEST(OpTableTest, DocsRolesTableListsExactlyTheTable) {
  const std::string path = std::string(VCRYPT_SOURCE_DIR) + "/docs/protocol.md";
  std::ifstream f(path);
  ASSERT_TRUE(f) << "cannot read " << path;
  std::stringstream text;
  text << f.rdbuf();
  std::map<std::string, Role> documented = DocumentedRoles(text.str());
  std::map<std::string, Role> table;
  for (const auto& op : Controller::Ops())
    table[std::string(op.name)] = op.role;
  for (const auto& [op, role] : table) {
    auto it = documented.find(op);
    if (it == documented.end()) {
      ADD_FAILURE() << "op '" << op << "' is missing from " << path
                    << ", \"Roles\"";
      continue;
    }
    EXPECT_EQ(RoleName(it->second), RoleName(role))
        << "op '" << op << "' has another role in " << path;
  }
  for (const auto& [op, role] : documented)
    EXPECT_TRUE(table.count(op))
        << path << ", \"Roles\", lists '" << op << "', which is no op";
}

}  // namespace
}  // namespace vcrypt
