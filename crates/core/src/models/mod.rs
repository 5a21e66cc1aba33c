//! Model families, one file each, named after Hugging Face's `model_type`.

pub mod llama;
