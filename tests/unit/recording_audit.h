// An AuditSink for tests that keeps every record (daemon/audit.h). Write
// may come from any thread (a server's connection threads).
#ifndef VCRYPT_TESTS_UNIT_RECORDING_AUDIT_H_
#define VCRYPT_TESTS_UNIT_RECORDING_AUDIT_H_

#include <cstddef>
#include <mutex>
#include <vector>

#include "daemon/audit.h"

namespace vcrypt::testing {

class RecordingAuditSink : public AuditSink {
 public:
  void Write(const AuditRecord& r) override {
    std::lock_guard lock(mu_);
    records_.push_back(r);
  }
  // Every record so far.
  std::vector<AuditRecord> records() const {
    std::lock_guard lock(mu_);
    return records_;
  }
  // The records written since the last Take.
  std::vector<AuditRecord> Take() {
    std::lock_guard lock(mu_);
    std::vector<AuditRecord> out(records_.begin() + taken_, records_.end());
    taken_ = records_.size();
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<AuditRecord> records_;
  size_t taken_ = 0;
};

}  // namespace vcrypt::testing

#endif  // VCRYPT_TESTS_UNIT_RECORDING_AUDIT_H_
