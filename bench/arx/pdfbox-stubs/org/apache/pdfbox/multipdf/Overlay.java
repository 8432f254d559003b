package org.apache.pdfbox.multipdf;

/** Compile-time stand-in for pdfbox-app-2.0.1.jar, absent from the ARX snapshot (PDF certificates only). */
public class Overlay {
    public enum Position { FOREGROUND, BACKGROUND }
    public void setInputPDF(org.apache.pdfbox.pdmodel.PDDocument doc) { }
    public void setAllPagesOverlayPDF(org.apache.pdfbox.pdmodel.PDDocument doc) { }
    public void setOverlayPosition(Position position) { }
    public org.apache.pdfbox.pdmodel.PDDocument overlay(java.util.Map<Integer, String> map) throws java.io.IOException { throw new java.io.IOException("pdfbox stub"); }
}
