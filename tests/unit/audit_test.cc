// The audit line format, its sanitising, and the journal-vs-stderr choice
// (daemon/audit.h). What the Controller audits is in daemon_test.cc.
#include "daemon/audit.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>

namespace vcrypt {
namespace {

AuditRecord Fetch() {
  AuditRecord r = AuditRecord::For(AuditContext{0, "open"}, AuditOp::kKekFetch);
  r.vm = "web01";
  r.disk = "root";
  r.volume = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
  r.provider = "local";
  r.kek_id = "6a2c0a4e-52b5-4c4f-9f6e-0d8f3b1c2a10";
  r.source = "cache";
  return r;
}

TEST(AuditTest, OpNamesAreStable) {
  EXPECT_EQ(AuditOpName(AuditOp::kKekCreate), "kek.create");
  EXPECT_EQ(AuditOpName(AuditOp::kKekFetch), "kek.fetch");
  EXPECT_EQ(AuditOpName(AuditOp::kDekWrap), "dek.wrap");
  EXPECT_EQ(AuditOpName(AuditOp::kDekUnwrap), "dek.unwrap");
  EXPECT_EQ(AuditOpName(AuditOp::kKekRekey), "kek.rekey");
  EXPECT_EQ(AuditOpName(AuditOp::kKekEvict), "kek.evict");
  EXPECT_EQ(AuditOpName(AuditOp::kKekDestroy), "kek.destroy");
  EXPECT_EQ(AuditOpName(AuditOp::kProviderAdd), "provider.add");
  EXPECT_EQ(AuditOpName(AuditOp::kProviderRemove), "provider.remove");
  EXPECT_EQ(AuditOpName(AuditOp::kProviderBackup), "provider.backup");
  EXPECT_EQ(AuditOpName(AuditOp::kProviderRestore), "provider.restore");
  EXPECT_EQ(AuditOpName(AuditOp::kDekErase), "dek.erase");
}

TEST(AuditTest, LineHasEveryFieldInOrder) {
  EXPECT_EQ(FormatAuditLine(Fetch()),
            "vcrypt-audit: uid=0 op=kek.fetch request=open vm=web01 disk=root "
            "volume=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 provider=local "
            "kek_id=6a2c0a4e-52b5-4c4f-9f6e-0d8f3b1c2a10 source=cache result=ok");
}

TEST(AuditTest, EmptyFieldsAreLeftOutButUidOpResultStay) {
  AuditRecord r;
  r.op = AuditOp::kKekEvict;
  r.uid = 1000;
  EXPECT_EQ(FormatAuditLine(r), "vcrypt-audit: uid=1000 op=kek.evict result=ok");
  r.primary_key_id = "pk";
  EXPECT_EQ(FormatAuditLine(r),
            "vcrypt-audit: uid=1000 op=kek.evict primary_key_id=pk result=ok");
}

TEST(AuditTest, FailureHasCodeNameAndQuotedMessage) {
  AuditRecord r = Fetch();
  r.source = "provider";
  r.error = MakeError(ErrorCode::kKeyUnavailable,
                      "no KMS answered: kms1:5696: connection refused");
  EXPECT_EQ(FormatAuditLine(r),
            "vcrypt-audit: uid=0 op=kek.fetch request=open vm=web01 disk=root "
            "volume=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 provider=local "
            "kek_id=6a2c0a4e-52b5-4c4f-9f6e-0d8f3b1c2a10 source=provider "
            "result=key_unavailable "
            "error=\"no KMS answered: kms1:5696: connection refused\"");
  auto fields = AuditFields(r);
  ASSERT_GE(fields.size(), 2u);
  EXPECT_EQ(fields[fields.size() - 2],
            (std::pair<std::string, std::string>("result", "key_unavailable")));
  EXPECT_EQ(fields.back().first, "error");
  EXPECT_EQ(fields.back().second, "no KMS answered: kms1:5696: connection refused");
}

TEST(AuditTest, QuotingAndEscaping) {
  EXPECT_EQ(AuditQuote("plain-value_1.2:3/4"), "plain-value_1.2:3/4");
  EXPECT_EQ(AuditQuote(""), "\"\"");
  EXPECT_EQ(AuditQuote("two words"), "\"two words\"");
  EXPECT_EQ(AuditQuote("a=b"), "\"a=b\"");
  EXPECT_EQ(AuditQuote("say \"hi\""), "\"say \\\"hi\\\"\"");
  EXPECT_EQ(AuditQuote("back\\slash"), "\"back\\\\slash\"");
  EXPECT_EQ(AuditQuote("tab\there"), "\"tab\\x09here\"");
  EXPECT_EQ(AuditQuote(std::string("nul\0x", 5)), "\"nul\\x00x\"");
  EXPECT_EQ(AuditQuote("\x7f"), "\"\\x7f\"");
  EXPECT_EQ(AuditQuote("caf\xc3\xa9"), "\"caf\\xc3\\xa9\"");
  // Journal fields: escaped the same way, never quoted.
  EXPECT_EQ(AuditEscape("two words"), "two words");
  EXPECT_EQ(AuditEscape("a\\b\nc"), "a\\\\b\\x0ac");
}

// Whatever a VM name, path or error message holds, the record stays one
// line of printable ASCII: no forged second record, no terminal escapes.
TEST(AuditTest, ControlCharactersCannotBreakTheLine) {
  AuditRecord r = Fetch();
  r.vm = "evil\nvcrypt-audit: uid=0 op=kek.destroy result=ok";
  r.error = MakeError(ErrorCode::kIo, "cannot read /tmp/\x1b[2Jx\r\n: I/O error");
  const std::string line = FormatAuditLine(r);
  for (unsigned char c : line) {
    EXPECT_GE(c, 0x20) << line;
    EXPECT_LT(c, 0x7f) << line;
  }
  // The injected text stays inside the quoted value of vm.
  EXPECT_NE(line.find(" vm=\"evil\\x0avcrypt-audit: uid=0 op=kek.destroy "
                      "result=ok\" disk=root "),
            std::string::npos)
      << line;
  EXPECT_NE(line.find(" error=\"cannot read /tmp/\\x1b[2Jx\\x0d\\x0a: I/O "
                      "error\""),
            std::string::npos)
      << line;
}

TEST(AuditTest, OutcomeFromResultAndStatus) {
  AuditRecord r;
  Result<int> bad = MakeError(ErrorCode::kCrypto, "wrong password");
  r.Outcome(bad);
  ASSERT_TRUE(r.error.has_value());
  EXPECT_EQ(r.error->code, ErrorCode::kCrypto);
  r.Outcome(Status::Ok());
  EXPECT_FALSE(r.error.has_value());
}

// systemd sets JOURNAL_STREAM="<dev>:<ino>" of the stream it connected;
// stderr goes to the journal only if fd 2 is still that file.
TEST(AuditTest, JournalOnlyWhenStderrIsTheJournalStream) {
  struct stat st {};
  st.st_dev = 23;
  st.st_ino = 424242;
  EXPECT_TRUE(StderrIsJournal("23:424242", &st));
  EXPECT_FALSE(StderrIsJournal("23:424243", &st)) << "another inode";
  EXPECT_FALSE(StderrIsJournal("24:424242", &st)) << "another device";
  EXPECT_FALSE(StderrIsJournal(nullptr, &st)) << "not under systemd";
  EXPECT_FALSE(StderrIsJournal("23:424242", nullptr)) << "fstat failed";
  EXPECT_FALSE(StderrIsJournal("", &st));
  EXPECT_FALSE(StderrIsJournal("23", &st));
  EXPECT_FALSE(StderrIsJournal("23:", &st));
  EXPECT_FALSE(StderrIsJournal(":424242", &st));
  EXPECT_FALSE(StderrIsJournal("23:424242x", &st));
  EXPECT_FALSE(StderrIsJournal(" 23:424242", &st));
  EXPECT_FALSE(StderrIsJournal("+23:424242", &st));
  EXPECT_FALSE(StderrIsJournal("23:-1", &st));
  EXPECT_FALSE(StderrIsJournal("23:424242:1", &st));
  EXPECT_FALSE(StderrIsJournal("99999999999999999999999:424242", &st))
      << "overflow";
}

}  // namespace
}  // namespace vcrypt
