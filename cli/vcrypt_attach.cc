// vcrypt-attach: vcryptctl's attach and detach (cli/attach.h). vcryptctl
// execs it with its own argv; it is installed in ${libexecdir}/vcrypt and
// is not meant to be run by hand, though it takes every vcryptctl command.
#include <iostream>

#include "cli/attach.h"

int main(int argc, char** argv) {
  return vcrypt::RunCliWithLibvirt(argc, argv, std::cout, std::cerr);
}
