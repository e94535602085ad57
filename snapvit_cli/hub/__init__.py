"""The Hugging Face Hub: ids, downloads and error messages (``client``), uploads (``push``), model cards."""
