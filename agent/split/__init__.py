"""Split inference: cut an ONNX model in two, plan the cut from measurements, and run the head
and the tail on two devices over MQTT."""
