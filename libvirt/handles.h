// RAII owners for the libvirt and libxml2 handles, in one place. Same
// pattern as common/handles.h; kept apart because only vcrypt_libvirt links
// libvirt and libxml2.
//
// Each is a std::unique_ptr whose deleter calls the library's own free
// function. Nothing else in libvirt/ frees a libvirt or libxml2 object.
#ifndef VCRYPT_LIBVIRT_HANDLES_H_
#define VCRYPT_LIBVIRT_HANDLES_H_

#include <libvirt/libvirt.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include <cstdlib>
#include <memory>

namespace vcrypt {

// libvirt. virConnectClose/virDomainFree drop one reference each.
struct VirConnectDeleter {
  void operator()(virConnectPtr c) const {
    if (c != nullptr) virConnectClose(c);
  }
};
using VirConnectHandle = std::unique_ptr<virConnect, VirConnectDeleter>;

struct VirDomainDeleter {
  void operator()(virDomainPtr d) const {
    if (d != nullptr) virDomainFree(d);
  }
};
using VirDomainHandle = std::unique_ptr<virDomain, VirDomainDeleter>;

// Strings libvirt returns for the caller to free (virDomainGetXMLDesc, ...):
// plain malloc memory.
struct MallocDeleter {
  void operator()(char* p) const { std::free(p); }
};
using VirString = std::unique_ptr<char, MallocDeleter>;

// libxml2.
struct XmlDocDeleter {
  void operator()(xmlDocPtr d) const {
    if (d != nullptr) xmlFreeDoc(d);
  }
};
using XmlDocHandle = std::unique_ptr<xmlDoc, XmlDocDeleter>;

struct XmlParserCtxtDeleter {
  void operator()(xmlParserCtxtPtr c) const {
    if (c != nullptr) xmlFreeParserCtxt(c);
  }
};
using XmlParserCtxtHandle =
    std::unique_ptr<xmlParserCtxt, XmlParserCtxtDeleter>;

struct XmlBufferDeleter {
  void operator()(xmlBufferPtr b) const {
    if (b != nullptr) xmlBufferFree(b);
  }
};
using XmlBufferHandle = std::unique_ptr<xmlBuffer, XmlBufferDeleter>;

// Strings libxml2 allocates (xmlGetProp, ...). xmlFree is a function
// pointer variable, so it cannot be a template argument.
struct XmlCharDeleter {
  void operator()(xmlChar* p) const {
    if (p != nullptr) xmlFree(p);
  }
};
using XmlString = std::unique_ptr<xmlChar, XmlCharDeleter>;

}  // namespace vcrypt

#endif  // VCRYPT_LIBVIRT_HANDLES_H_
