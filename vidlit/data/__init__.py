"""Video data: records, decoding, clip sampling, balanced batches and the shared DataModule."""
from vidlit.data.datamodule import DATAMODULES, MultiDomainDataModule, register_datamodule
from vidlit.data.records import DataError, VideoRecord
from vidlit.data.video_io import VideoDecodeError

__all__ = ["DATAMODULES", "MultiDomainDataModule", "register_datamodule", "DataError", "VideoRecord", "VideoDecodeError"]
