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

// Calls Free(p) for a non-null p; unique_ptr never calls it with null, the
// check is for the libraries that do not accept null.
template <auto Free>
struct FreeWith {
  template <typename T>
  void operator()(T* p) const {
    if (p != nullptr) Free(p);
  }
};

// libvirt. virConnectClose/virDomainFree drop one reference each.
using VirConnectHandle = std::unique_ptr<virConnect, FreeWith<virConnectClose>>;
using VirDomainHandle = std::unique_ptr<virDomain, FreeWith<virDomainFree>>;
// Strings libvirt returns for the caller to free (virDomainGetXMLDesc, ...):
// plain malloc memory.
inline void FreeMalloced(char* p) { std::free(p); }
using VirString = std::unique_ptr<char, FreeWith<FreeMalloced>>;

// libxml2.
using XmlDocHandle = std::unique_ptr<xmlDoc, FreeWith<xmlFreeDoc>>;
using XmlParserCtxtHandle =
    std::unique_ptr<xmlParserCtxt, FreeWith<xmlFreeParserCtxt>>;
using XmlBufferHandle = std::unique_ptr<xmlBuffer, FreeWith<xmlBufferFree>>;

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
