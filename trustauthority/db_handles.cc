// The deleters of common/handles.h for SQLite and libpq (the libraries
// only trustauthority/ links).
#include <libpq-fe.h>
#include <sqlite3.h>

#include "common/handles.h"

namespace vcrypt {

void SqliteDeleter::operator()(sqlite3* db) const { sqlite3_close_v2(db); }
void SqliteStmtDeleter::operator()(sqlite3_stmt* s) const {
  sqlite3_finalize(s);
}
void PgConnDeleter::operator()(pg_conn* c) const { PQfinish(c); }
void PgResultDeleter::operator()(pg_result* r) const { PQclear(r); }
void PgConninfoDeleter::operator()(_PQconninfoOption* o) const {
  PQconninfoFree(o);
}
void PgFreememDeleter::operator()(char* p) const { PQfreemem(p); }

}  // namespace vcrypt
