"""quant.datasets"""
