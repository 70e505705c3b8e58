"""Pretrained networks and their weights: InstructPix2Pix, CLIP, LPIPS-VGG, local weight readers."""
