# Helpers shared by every part's CMakeLists.

# djinn_add_test_dir(PART [LABELS extra...] [LIBS libs...])
# Every tests/<PART>/test_*.cpp becomes an executable test-<PART>-<name>, registered with ctest
# under the label PART (plus any extra labels). A file whose name ends in _slow.cpp also gets
# the label "slow", so `ctest -LE slow` skips it.
function(djinn_add_test_dir part)
  cmake_parse_arguments(ARG "" "" "LABELS;LIBS" ${ARGN})
  file(GLOB sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/test_*.cpp)
  foreach(src ${sources})
    get_filename_component(stem ${src} NAME_WE)
    string(REGEX REPLACE "^test_" "" name ${stem})
    string(REGEX REPLACE "_slow$" "" name ${name})
    string(REPLACE "_" "-" name ${name})
    set(target test-${part}-${name})
    add_executable(${target} ${src})
    target_link_libraries(${target} PRIVATE djinn_test_main ${ARG_LIBS} djinn_warnings)
    add_test(NAME ${part}.${name} COMMAND ${target})
    set(labels ${part} ${ARG_LABELS})
    if(stem MATCHES "_slow$")
      list(APPEND labels slow)
    endif()
    set_tests_properties(${part}.${name} PROPERTIES LABELS "${labels}" TIMEOUT 600
      ENVIRONMENT "DJINN_BUILD_DIR=${CMAKE_BINARY_DIR}")
  endforeach()
endfunction()

# djinn_add_part_library(PART [DEPS targets...])
# The library of one part laid out as DESIGN §1 and STYLE describe: Cap'n Proto schemas in
# PART/proto/*.capnp (generated headers included as "djinn/proto/NAME.capnp.h"), public headers in
# PART/include, sources in PART/src. Creates djinn_PART with the alias djinn::PART, exported as
# djinn::PART, installed with its headers and schemas. DEPS are linked publicly.
function(djinn_add_part_library part)
  cmake_parse_arguments(ARG "" "" "DEPS" ${ARGN})
  set(dir ${CMAKE_CURRENT_SOURCE_DIR})
  file(GLOB schemas CONFIGURE_DEPENDS ${dir}/proto/*.capnp)
  set(capnp_srcs)
  if(schemas)
    set(CAPNPC_SRC_PREFIX ${dir}/proto)
    set(CAPNPC_OUTPUT_DIR ${CMAKE_CURRENT_BINARY_DIR}/gen/djinn/proto)
    # Schemas of other parts are imported as "/djinn/proto/NAME.capnp", which makes the generated
    # code include "djinn/proto/NAME.capnp.h", the path their generated headers are found at.
    foreach(schema ${schemas})
      get_filename_component(name ${schema} NAME)
      configure_file(${schema} ${PROJECT_BINARY_DIR}/capnp-import/djinn/proto/${name} COPYONLY)
    endforeach()
    set(CAPNPC_IMPORT_DIRS ${PROJECT_SOURCE_DIR}/core/proto ${PROJECT_BINARY_DIR}/capnp-import)
    file(MAKE_DIRECTORY ${CAPNPC_OUTPUT_DIR})
    capnp_generate_cpp(capnp_srcs capnp_hdrs ${schemas})
  endif()
  file(GLOB srcs CONFIGURE_DEPENDS ${dir}/src/*.cpp)
  set(target djinn_${part})
  add_library(${target} ${srcs} ${capnp_srcs})
  add_library(djinn::${part} ALIAS ${target})
  target_include_directories(${target}
    PUBLIC $<BUILD_INTERFACE:${dir}/include>
           $<BUILD_INTERFACE:${CMAKE_CURRENT_BINARY_DIR}/gen>
           $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
    PRIVATE ${dir}/src)
  target_link_libraries(${target} PUBLIC ${ARG_DEPS} PRIVATE $<BUILD_INTERFACE:djinn_warnings>)
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON EXPORT_NAME ${part})
  install(TARGETS ${target} EXPORT djinnTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(DIRECTORY ${dir}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/gen/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
          FILES_MATCHING PATTERN "*.h")
  if(schemas)
    install(FILES ${schemas} DESTINATION ${CMAKE_INSTALL_DATADIR}/djinn/proto)
  endif()
endfunction()

# djinn_add_daemon(NAME SOURCE LIBS...): an executable a user runs, installed to bin/.
function(djinn_add_daemon name source)
  add_executable(${name} ${source})
  target_link_libraries(${name} PRIVATE ${ARGN} djinn_warnings)
  if(TARGET PkgConfig::JEMALLOC)
    target_link_libraries(${name} PRIVATE PkgConfig::JEMALLOC)
  endif()
  install(TARGETS ${name} EXPORT djinnTargets RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endfunction()
