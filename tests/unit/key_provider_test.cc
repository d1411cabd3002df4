// The pieces every provider shares: the staged provider directory (nothing
// left behind by a failed `provider add`) and the config reader.
#include "keyproviders/key_provider.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/test_util.h"

namespace vcrypt {
namespace {

namespace fs = std::filesystem;

TEST(StagedProviderDirTest, RemovedUnlessCommittedThenRenamedIntoPlace) {
  testing::TempDir t("staged");
  const std::string dir = t.path() + "/p";
  {
    auto s = StagedProviderDir::Begin(dir);
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_EQ(s->path(), dir + ".new");
    std::ofstream(s->path() + "/config.json") << "{}";
  }  // a failure path: dropped without Commit
  EXPECT_FALSE(fs::exists(dir + ".new"));
  EXPECT_FALSE(fs::exists(dir));

  fs::create_directories(dir + ".new/junk");  // left by a crash
  auto s = StagedProviderDir::Begin(dir);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(fs::exists(dir + ".new/junk"));
  EXPECT_EQ(fs::status(s->path()).permissions() & fs::perms::all,
            fs::perms::owner_all);
  std::ofstream(s->path() + "/config.json") << "{}";
  ASSERT_TRUE(s->Commit().ok());
  EXPECT_TRUE(fs::exists(dir + "/config.json"));
  EXPECT_FALSE(fs::exists(dir + ".new"));

  auto again = StagedProviderDir::Begin(dir);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, ErrorCode::kExists);
  EXPECT_TRUE(fs::exists(dir + "/config.json")) << "an existing provider was touched";
}

TEST(ReadProviderConfigTest, ChecksObjectVersionAndType) {
  testing::TempDir t("cfg");
  auto write = [&](const std::string& text) {
    std::ofstream(t.path() + "/config.json") << text;
  };
  write(R"({"version":1,"type":"trusted","name":"ta"})");
  auto c = ReadProviderConfig(t.path(), "trusted", 1);
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ((*c)["name"], "ta");
  EXPECT_EQ(ReadProviderConfig(t.path(), "standard", 1).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(ReadProviderConfig(t.path(), "trusted", 2).error().code,
            ErrorCode::kInvalidArgument);
  write("[1,2]");
  auto bad = ReadProviderConfig(t.path(), "trusted", 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("config.json"), std::string::npos);
}

}  // namespace
}  // namespace vcrypt
