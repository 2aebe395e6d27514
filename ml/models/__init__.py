"""Networks: the CAM network, CLIP wrapper, adaptors, prompt learners and IRNet's boundary branch."""
