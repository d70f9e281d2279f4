"""quant.cache"""
