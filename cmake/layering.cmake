# The layering of README.md ("Layout"), enforced by target dependencies.
#
# The source root is on no include path. Each library publishes the folders
# (or single headers) it owns in an include root of its own in the build
# tree, build/include/<target>/, made of symlinks into the source tree, and
# adds that root as a PUBLIC include directory. An `#include "folder/x.h"`
# therefore resolves in a target only if the target links, itself or
# through PUBLIC dependencies, the library that owns folder/x.h; an include
# against the layering fails to compile ("No such file or directory").
# tests/layering/ checks that it does.
#
#   vcrypt_publish_headers(TARGET PATH...)
#
# PATH is a folder or a header relative to the source root, spelt as the
# includes spell it (keyproviders/native, keyproviders/key_provider.h). A
# folder shared by two libraries is published header by header.
function(vcrypt_publish_headers target)
  set(root ${PROJECT_BINARY_DIR}/include/${target})
  _vcrypt_link_headers(vcrypt_publish_headers ${target} ${root} ${ARGN})
  get_target_property(type ${target} TYPE)
  if(type STREQUAL "INTERFACE_LIBRARY")
    target_include_directories(${target} INTERFACE ${root})
  else()
    target_include_directories(${target} PUBLIC ${root})
  endif()
endfunction()

#   vcrypt_private_headers(TARGET PATH...)
#
# Headers that TARGET's own sources include, spelt the same way
# (dmtools/lib_internal.h), but that no other target sees: they go into a
# second root, build/private_include/<target>/, added PRIVATE.
function(vcrypt_private_headers target)
  set(root ${PROJECT_BINARY_DIR}/private_include/${target})
  _vcrypt_link_headers(vcrypt_private_headers ${target} ${root} ${ARGN})
  target_include_directories(${target} PRIVATE ${root})
endfunction()

# Makes `root` afresh, holding a symlink to each of the source paths.
function(_vcrypt_link_headers caller target root)
  # Made afresh at every configure, so that nothing published before and
  # dropped since stays visible. (REMOVE_RECURSE removes symlinks, it does
  # not follow them.)
  file(REMOVE_RECURSE ${root})
  foreach(path IN LISTS ARGN)
    if(NOT EXISTS ${PROJECT_SOURCE_DIR}/${path})
      message(FATAL_ERROR "${caller}(${target}): no ${path}")
    endif()
    get_filename_component(parent ${root}/${path} DIRECTORY)
    file(MAKE_DIRECTORY ${parent})
    file(CREATE_LINK ${PROJECT_SOURCE_DIR}/${path} ${root}/${path} SYMBOLIC)
  endforeach()
endfunction()
