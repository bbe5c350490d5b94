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
