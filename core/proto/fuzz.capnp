# Inputs of the libFuzzer target fuzz/fuzz_template.cpp: one message carries a template and an
# entry, and a service template and a service item, so one input exercises decoding, validation
# and both kinds of matching. Not part of any protocol.
@0xe6a7265de3c8dbd5;

$import "/capnp/c++.capnp".namespace("djinn::proto");

using Model = import "model.capnp";

struct FuzzTemplateCase {
  template @0 :Model.Template;
  entry @1 :Model.Entry;
  serviceTemplate @2 :Model.ServiceTemplate;
  serviceItem @3 :Model.ServiceItem;
}
