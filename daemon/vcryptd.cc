#include "daemon/daemon_main.h"

int main(int argc, char** argv) { return vcrypt::DaemonMain(argc, argv); }
